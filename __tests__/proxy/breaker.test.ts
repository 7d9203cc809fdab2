import { afterAll, describe, expect, it } from '@jest/globals';
import { Agent, request } from 'undici';
import { redundantProxy } from '../../lib/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { testClient } from '../helpers/client.js';
import { mountGateway } from '../helpers/gateway.js';
import { eventually } from '../helpers/replica.js';
import { after, startUpstream, type Behaviour } from '../helpers/upstream.js';

// One slow path must not starve the others: connections enough for what may
// hang, and a circuit breaker (maxInFlight) that answers at once past it.

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

/** /slow never answers (until its request is stopped); anything else answers at once. */
const slowPath: Behaviour = (req, res, body) => (req.url?.startsWith('/slow') ? new Promise<void>((r) => res.on('close', () => r())) : after(0)(req, res, body));

async function hang(url: string, n: number) {
  const agent = new Agent({ connections: null, keepAliveTimeout: 100 });
  const controller = new AbortController();
  const pending = Array.from({ length: n }, () => request(`${url}/slow`, { dispatcher: agent, signal: controller.signal }).then((r) => r.body.dump(), () => undefined));
  return {
    close: async () => {
      controller.abort();
      await Promise.allSettled(pending);
      await agent.destroy();
    },
  };
}

describe('one slow path and the rest', () => {
  it('300 requests hung on one path leave a healthy path answering at once (default pools)', async () => {
    const ups = [await startUpstream(slowPath), await startUpstream(slowPath), await startUpstream(slowPath)];
    open.push(...ups);
    const proxy = redundantProxy({ upstreams: ups.map((u, i) => ({ id: `u${i}`, url: u.url })), timeout: 10_000 });
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    const hung = await hang(gw.url, 300);
    open.push(hung);
    await eventually(() => ups.every((u) => u.seen.filter((s) => s.url === '/slow').length >= 300), 10_000);
    const t0 = Date.now();
    const probe = await client.send(`${gw.url}/healthy`);
    expect(probe.status).toBe(200);
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  it('past maxInFlight a request is refused at once with 503 RP_ERR_UPSTREAM_BUSY, and served again once copies end', async () => {
    const ups = [await startUpstream(slowPath), await startUpstream(slowPath)];
    open.push(...ups);
    const proxy = redundantProxy({ upstreams: ups.map((u, i) => ({ id: `u${i}`, url: u.url })), timeout: 10_000, connections: 64, maxInFlight: 40 });
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    const hung = await hang(gw.url, 40);
    await eventually(() => ups.every((u) => u.seen.filter((s) => s.url === '/slow').length >= 40), 10_000);
    const t0 = Date.now();
    const refused = await client.send(`${gw.url}/healthy`);
    expect(refused.status).toBe(503);
    expect(refused.json()).toMatchObject({ code: 'RP_ERR_UPSTREAM_BUSY' });
    expect(refused.headers['retry-after']).toBe('1');
    expect(Date.now() - t0).toBeLessThan(1000);
    await hung.close();
    await eventually(async () => (await client.send(`${gw.url}/healthy`)).status === 200, 5000);
  });

  it('maxInFlight is checked at construction', () => {
    expect(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], connections: 10, maxInFlight: 11 })).toThrow(/maxInFlight/);
    expect(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], maxInFlight: 0 })).toThrow(/maxInFlight/);
  });
});
