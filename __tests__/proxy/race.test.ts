import { afterAll, describe, expect, it, jest } from '@jest/globals';
import { redundantProxy, type ProxyOptions } from '../../lib/index.js';
import { testClient } from '../helpers/client.js';
import { frameworks, mountGateway, raceFixture, type Framework } from '../helpers/gateway.js';
import { after, deadPort, sleep, startUpstream, type Behaviour } from '../helpers/upstream.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { eventually } from '../helpers/replica.js';
import { withScheduler } from '../../lib/time.js';
import { VirtualTime } from '../helpers/virtual-time.js';

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

const setup = (kind: Framework, behaviours: Behaviour[], options: Partial<ProxyOptions> = {}) => raceFixture(open, kind, behaviours, options);

describe.each(frameworks)('race (%s)', (kind) => {
  it('answers with the fastest copy and the slower copies are stopped by their servers', async () => {
    const { ups, gw, reports } = await setup(kind, [after(400, 200, { from: 'slow' }), after(5, 200, { from: 'fast' }), after(600, 200, { from: 'slower' })]);
    const res = await client.send(`${gw.url}/items/7?x=1`);
    expect(res.status).toBe(200);
    expect(res.json()).toEqual({ from: 'fast' });
    expect(res.headers['x-redundant-served-by']).toBe('u1');
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    // Every upstream received a copy, and the two slow ones saw their request stopped.
    expect(ups.map((u) => u.seen.length)).toEqual([1, 1, 1]);
    expect(await ups[0]!.seen[0]!.stopped).toBe(true);
    expect(await ups[2]!.seen[0]!.stopped).toBe(true);
    expect(await ups[1]!.seen[0]!.stopped).toBe(false);
    expect(ups[0]!.seen[0]!.url).toBe('/items/7?x=1');
    // A race is reported once its losers' grace is over.
    const r = await eventually(() => reports[0]);
    await sleep(20);
    expect(reports).toHaveLength(1);
    expect(r.outcome).toBe('won');
    expect(r.servedBy).toBe('u1');
    expect(r.copies.map((c) => c.outcome).sort()).toEqual(['stopped', 'stopped', 'won']);
  });

  it('a fast 5xx loses to a slower 2xx', async () => {
    const { gw } = await setup(kind, [after(1, 503, { bad: true }), after(60, 200, { good: true })]);
    const res = await client.send(`${gw.url}/`);
    expect(res.status).toBe(200);
    expect(res.json()).toEqual({ good: true });
    expect(res.headers['x-redundant-served-by']).toBe('u1');
  });

  it("passes an upstream's own error through when no copy is acceptable", async () => {
    const { gw, reports } = await setup(kind, [after(1, 503, { down: 'a' }, { 'retry-after': '3' }), after(20, 500, { down: 'b' })]);
    const res = await client.send(`${gw.url}/`);
    expect(res.status).toBe(503);
    expect(res.json()).toEqual({ down: 'a' });
    expect(res.headers['retry-after']).toBe('3');
    expect(res.headers['x-request-id']).toBeDefined();
    await eventually(() => reports[0]);
    expect(reports[0]!.outcome).toBe('failed');
    expect(reports[0]!.copies.map((c) => c.outcome)).toEqual(['rejected', 'rejected']);
  });

  it('answers 502 with a JSON code quickly when every upstream is down', async () => {
    const proxy = redundantProxy({ upstreams: [`http://127.0.0.1:${await deadPort()}`, `http://127.0.0.1:${await deadPort()}`], timeout: 10_000 });
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    const t0 = Date.now();
    const res = await client.send(`${gw.url}/`);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(res.status).toBe(502);
    expect(res.headers['content-type']).toMatch(/application\/json/);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_UPSTREAMS_FAILED', requestId: res.headers['x-request-id'] });
  });

  it('answers 504 with a JSON code when nothing acceptable arrives within timeout, and stops the copies', async () => {
    // On a virtual clock: the timeout comes when the test moves the clock, not before.
    const vt = new VirtualTime();
    const { ups, gw, reports } = await setup(kind, [after(60_000), after(60_000)], withScheduler({ timeout: 30_000 }, vt));
    let answered = false;
    const pending = client.send(`${gw.url}/`).finally(() => (answered = true));
    await eventually(() => ups[0]!.seen.length === 1 && ups[1]!.seen.length === 1);
    await vt.advance(29_999);
    expect([answered, reports.length]).toEqual([false, 0]);
    await vt.advance(1);
    const res = await pending;
    expect(res.status).toBe(504);
    expect((await eventually(() => reports[0])).copies.map((c) => [c.outcome, c.error])).toEqual([
      ['stopped', 'timeout'],
      ['stopped', 'timeout'],
    ]);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_TIMEOUT' });
    expect(await ups[0]!.seen[0]!.stopped).toBe(true);
    expect(await ups[1]!.seen[0]!.stopped).toBe(true);
  });
});

describe('custom accept and copies', () => {
  it('accept() decides which answers may win', async () => {
    const { gw } = await setup('node', [after(1, 404, { missing: true }), after(40, 200, { found: true })], {
      accept: (r: { status: number }) => r.status === 200,
    });
    const res = await client.send(`${gw.url}/`);
    expect(res.json()).toEqual({ found: true });
  });

  it('an accept() that throws counts as not acceptable and is reported as an event', async () => {
    const { gw, proxy } = await setup('node', [after(1)], {
      accept: () => {
        throw new Error('boom');
      },
    });
    const errors: unknown[] = [];
    proxy.on('error', (e) => errors.push(e));
    const res = await client.send(`${gw.url}/`);
    // The only answer was refused, so it is passed through as the upstream's own.
    expect(res.status).toBe(200);
    expect(errors).toHaveLength(1);
  });

  it('without an error listener, says the first failure of each source on the console, once', async () => {
    const spy = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
    try {
      const up = await startUpstream(after(1));
      open.push(up);
      const proxy = redundantProxy({
        upstreams: [up.url],
        accept: () => {
          throw new Error('boom');
        },
      });
      const gw = await mountGateway('node', proxy);
      open.push(gw, proxy);
      for (let i = 0; i < 3; i++) expect((await client.send(`${gw.url}/`)).status).toBe(200);
      const said = spy.mock.calls.filter((c) => String(c[0]).includes('the accept failed'));
      expect(said).toHaveLength(1);
      expect(String(said[0]![0])).toContain("silent without an 'error' listener");
      expect((said[0]![1] as Error).message).toBe('boom');
    } finally {
      spy.mockRestore();
    }
  });

  it('sends `copies` copies, spreading them over the upstreams', async () => {
    const { ups, gw } = await setup('node', [after(1), after(1), after(1)], { copies: 2 });
    for (let i = 0; i < 6; i++) expect((await client.send(`${gw.url}/`)).status).toBe(200);
    expect(ups.map((u) => u.seen.length)).toEqual([4, 4, 4]);
  });

  it('updates go to a single upstream', async () => {
    const { ups, gw } = await setup('node', [after(1), after(1), after(1)]);
    const res = await client.send(`${gw.url}/orders`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    expect(res.status).toBe(200);
    expect(ups.reduce((n, u) => n + u.seen.length, 0)).toBe(1);
    const copy = ups.find((u) => u.seen.length)!.seen[0]!;
    expect(copy.headers['x-redundant-update']).toBe('1');
    expect(copy.headers['x-redundant-copy']).toBe('1/1');
  });
});

describe('hedging', () => {
  // On a virtual clock: the hedge delay and the losers' grace pass only when
  // the test moves the clock, so what leaves when does not depend on the
  // machine's load.
  it('with a fixed delay, an answer before the delay means no second copy is sent', async () => {
    const vt = new VirtualTime();
    const { ups, gw, reports } = await setup('node', [after(5), after(5)], withScheduler({ hedge: { delay: 300 } }, vt));
    await client.send(`${gw.url}/`);
    await eventually(() => reports[0]);
    await vt.advance(1000);
    expect(ups[0]!.seen.length + ups[1]!.seen.length).toBe(1);
    expect(reports[0]!.copies.map((c) => c.outcome).sort()).toEqual(['not-sent', 'won']);
  });

  it('a copy slower than the delay gets a hedge, and the hedge can win', async () => {
    const vt = new VirtualTime();
    const { ups, gw, reports } = await setup('node', [after(60_000, 200, { n: 0 }), after(60_000, 200, { n: 1 })], withScheduler({ hedge: { delay: 50 } }, vt));
    // Make the second upstream fast from now on.
    ups[1]!.server.removeAllListeners('request');
    ups[1]!.server.on('request', (_req, res) => res.end(JSON.stringify({ n: 'hedge' })));
    const pending = client.send(`${gw.url}/`);
    await eventually(() => ups[0]!.seen.length === 1);
    expect(ups[1]!.server.listenerCount('request')).toBe(1);
    await vt.advance(49.9);
    expect(reports).toHaveLength(0);
    await vt.advance(0.1);
    const res = await pending;
    expect(res.json()).toEqual({ n: 'hedge' });
    // The first copy lingers for its grace (half the race so far, at most 10 ms), then is stopped.
    await vt.advance(10);
    const report = await eventually(() => reports[0]);
    const hedged = report.copies.find((c) => c.hedged)!;
    expect(hedged).toMatchObject({ outcome: 'won', sentAt: 50 });
    expect(report.copies[0]).toMatchObject({ outcome: 'stopped', hedged: false });
    expect(await ups[0]!.seen[0]!.stopped).toBe(true);
  });

  it('a failed copy triggers the next one at once, without waiting for the delay', async () => {
    const port = await deadPort();
    const good = await startUpstream(after(1, 200, { ok: 'second' }));
    open.push(good);
    const proxy = redundantProxy({ upstreams: [`http://127.0.0.1:${port}`, good.url], hedge: { delay: 5000 } });
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    const t0 = Date.now();
    // Rotation may start at either upstream; both orders must answer quickly.
    for (let i = 0; i < 2; i++) {
      const res = await client.send(`${gw.url}/`);
      expect(res.json()).toEqual({ ok: 'second' });
    }
    expect(Date.now() - t0).toBeLessThan(3000);
  });
});

describe('events and metrics', () => {
  it('reports every copy in race:start, copy:sent and race:end, and counts wins per upstream', async () => {
    const { gw, proxy } = await setup('node', [after(1), after(200)]);
    const starts: unknown[] = [];
    const sent: unknown[] = [];
    proxy.on('race:start', (e) => starts.push(e));
    const sub = proxy.on('copy:sent', (e) => sent.push(e));
    await client.send(`${gw.url}/a`);
    sub.dispose();
    await client.send(`${gw.url}/b`);
    expect(starts).toHaveLength(2);
    expect(sent).toHaveLength(2);
    await eventually(() => proxy.metrics().requests === 2);
    const m = proxy.metrics();
    expect(m.requests).toBe(2);
    expect(m.outcomes.won).toBe(2);
    expect(m.copiesSent).toBe(4);
    expect(m.upstreams.u0!.won).toBe(2);
    expect(m.upstreams.u0!.winRate).toBe(1);
    expect(m.upstreams.u1!.won).toBe(0);
    expect(m.wastedWork).toBe(1);
  });
});
