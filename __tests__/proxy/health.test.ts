import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from '@jest/globals';
import { request } from 'undici';
import { HealthChecker, passesByDefault, type HealthChange, type HealthCheckSettings, type Probe } from '../../lib/proxy/health.js';
import { VirtualTime } from '../helpers/virtual-time.js';

// Active health checks on virtual time (intervals and timeouts), probing real
// HTTP upstreams whose answer a test switches.

const closers: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

/** An upstream whose /health answers `state.status`, or never when `state.hang`. */
async function upstream() {
  const state = { status: 200, hang: false, asked: 0, open: 0 };
  const server = http.createServer((req, res) => {
    state.asked++;
    state.open++;
    res.on('close', () => state.open--);
    if (state.hang) return;
    res.writeHead(req.url === '/health' ? state.status : 404, { 'content-type': 'text/plain' }).end('x');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  closers.push(() => {
    server.closeAllConnections();
    return new Promise<void>((r) => server.close(() => r()));
  });
  return { url, state };
}

const settings = (extra: Partial<HealthCheckSettings> = {}): HealthCheckSettings => ({
  path: '/health',
  interval: 1000,
  timeout: 500,
  unhealthyThreshold: 2,
  healthyThreshold: 2,
  expect: passesByDefault,
  ...extra,
});

/** A checker over real upstreams, with a count of finished probes to wait on. */
function checker(urls: Record<string, string>, extra: Partial<HealthCheckSettings> = {}) {
  const time = new VirtualTime();
  const changes: HealthChange[] = [];
  let finished = 0;
  /** Probes started, counted as the checker asks (not as the upstream sees them, which real I/O delays). */
  const started = { count: 0 };
  const probe: Probe = async (id, path, signal) => {
    started.count++;
    try {
      const res = await request(`${urls[id]}${path}`, { signal });
      await res.body.dump();
      return res.statusCode;
    } finally {
      finished++;
    }
  };
  const hc = new HealthChecker(Object.keys(urls), settings(extra), probe, (c) => changes.push(c), time);
  closers.push(() => hc.close());
  /** Waits (on real I/O) until `n` probes in all have finished. */
  const probesDone = async (n: number) => {
    while (finished < n) await new Promise((r) => setTimeout(r, 2));
    await new Promise((r) => setImmediate(r));
  };
  return { hc, time, changes, probesDone, started };
}

describe('active health checks', () => {
  it('marks an upstream unhealthy after the threshold of failed probes in a row, and healthy again after the threshold of passes', async () => {
    const a = await upstream();
    const { hc, time, changes, probesDone } = checker({ a: a.url });
    hc.start();
    await probesDone(1);
    expect(hc.isHealthy('a')).toBe(true);

    a.state.status = 503;
    await time.advance(1000);
    await probesDone(2);
    expect(hc.isHealthy('a')).toBe(true); // one failure: not yet
    await time.advance(1000);
    await probesDone(3);
    expect(hc.isHealthy('a')).toBe(false);
    expect(changes).toEqual([{ upstreamId: 'a', healthy: false, inARow: 2, status: 503, error: 'status 503' }]);

    a.state.status = 204;
    await time.advance(1000);
    await probesDone(4);
    expect(hc.isHealthy('a')).toBe(false); // one pass: not yet
    await time.advance(1000);
    await probesDone(5);
    expect(hc.isHealthy('a')).toBe(true);
    expect(changes[1]).toEqual({ upstreamId: 'a', healthy: true, inARow: 2, status: 204 });
    expect(hc.snapshot().a).toMatchObject({ healthy: true, passesInARow: 2, failuresInARow: 0, lastStatus: 204 });
  });

  it('probes each upstream on its own: one failing does not touch the other', async () => {
    const a = await upstream();
    const b = await upstream();
    b.state.status = 500;
    const { hc, time, probesDone } = checker({ a: a.url, b: b.url }, { unhealthyThreshold: 1 });
    hc.start();
    await probesDone(2);
    expect(hc.isHealthy('a')).toBe(true);
    expect(hc.isHealthy('b')).toBe(false);
    await time.advance(1000);
    await probesDone(4);
    expect(a.state.asked).toBe(2);
    expect(b.state.asked).toBe(2);
  });

  it('fails a probe that gets no answer within the timeout, and starts the next one an interval after', async () => {
    const a = await upstream();
    a.state.hang = true;
    const { hc, time, changes, probesDone, started } = checker({ a: a.url }, { unhealthyThreshold: 1 });
    hc.start();
    while (a.state.asked < 1) await new Promise((r) => setTimeout(r, 2));
    await time.advance(499);
    expect(changes).toEqual([]);
    await time.advance(1);
    await probesDone(1);
    expect(changes).toEqual([{ upstreamId: 'a', healthy: false, inARow: 1, status: undefined, error: 'no answer within 500 ms' }]);
    // The aborted probe's connection is closed.
    while (a.state.open > 0) await new Promise((r) => setTimeout(r, 2));
    // The next probe: an interval after the end of this one, not before.
    await time.advance(999);
    expect(started.count).toBe(1);
    await time.advance(1);
    expect(started.count).toBe(2);
    while (a.state.asked < 2) await new Promise((r) => setTimeout(r, 2));
  });

  it('never runs two probes of one upstream at once', async () => {
    const a = await upstream();
    a.state.hang = true;
    // A timeout longer than several intervals: the interval only starts once a probe ended.
    const { hc, time, started } = checker({ a: a.url }, { timeout: 5000, interval: 100 });
    hc.start();
    while (a.state.asked < 1) await new Promise((r) => setTimeout(r, 2));
    await time.advance(4999);
    expect(started.count).toBe(1);
  });

  it('fails a probe whose upstream refuses the connection, naming why', async () => {
    const a = await upstream();
    const dead = a.url;
    await closers.pop()!();
    const { hc, changes, probesDone } = checker({ a: dead }, { unhealthyThreshold: 1 });
    hc.start();
    await probesDone(1);
    expect(hc.isHealthy('a')).toBe(false);
    expect(changes[0]!.error).toMatch(/ECONNREFUSED|connect/i);
  });

  it('stops probing at close(): the probe in flight is aborted and no timer is left', async () => {
    const a = await upstream();
    a.state.hang = true;
    const { hc, time, changes } = checker({ a: a.url }, { unhealthyThreshold: 1 });
    hc.start();
    while (a.state.open < 1) await new Promise((r) => setTimeout(r, 2));
    hc.close();
    while (a.state.open > 0) await new Promise((r) => setTimeout(r, 2));
    await new Promise((r) => setImmediate(r));
    expect(time.pending).toBe(0);
    expect(changes).toEqual([]); // closing is not a failure
    expect(hc.isHealthy('a')).toBe(true);
  });

  it('takes an id it does not check as healthy', () => {
    const hc = new HealthChecker([], settings(), async () => 200, () => undefined, new VirtualTime());
    expect(hc.isHealthy('nobody')).toBe(true);
  });
});
