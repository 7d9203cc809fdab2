import { once } from 'node:events';
import http from 'node:http';
import { afterAll, describe, expect, it } from '@jest/globals';
import { redundantProxy, type ProxyOptions, type RaceReport, type UpstreamEjectedEvent } from '../../lib/index.js';
import { Ejector } from '../../lib/proxy/ejection.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { testClient } from '../helpers/client.js';
import { mountGateway } from '../helpers/gateway.js';
import { eventually } from '../helpers/replica.js';
import { after, deadPort, startUpstream } from '../helpers/upstream.js';
import { withScheduler } from '../../lib/time.js';
import { VirtualTime } from '../helpers/virtual-time.js';

// Outlier ejection on real upstreams: a replica that is down, or answers 5xx,
// stops receiving copies; its time out runs on the proxy's injected clock.

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

async function setup(urls: string[], options: Partial<ProxyOptions> = {}) {
  let skew = 0;
  const proxy = redundantProxy({ upstreams: urls.map((url, i) => ({ id: `u${i}`, url })), now: () => performance.now() + skew, ...options });
  const gw = await mountGateway('node', proxy);
  open.push(gw, proxy);
  const log: string[] = [];
  const ejected: UpstreamEjectedEvent[] = [];
  const reports: RaceReport[] = [];
  proxy.on('upstream:ejected', (e) => {
    ejected.push(e);
    log.push(`ejected ${e.upstream}`);
  });
  proxy.on('upstream:restored', (e) => log.push(`restored ${e.upstream}`));
  proxy.on('race:end', (r) => reports.push(r));
  /** Sends n requests one after another; each resolves once its race is reported. */
  const send = async (n: number) => {
    for (let i = 0; i < n; i++) {
      const before = reports.length;
      const res = await client.send(`${gw.url}/x`);
      expect(res.status).toBe(200);
      await eventually(() => reports.length > before || undefined);
    }
  };
  return { proxy, gw, log, ejected, reports, send, advance: (ms: number) => void (skew += ms) };
}

const sentTo = (r: RaceReport) => r.copies.filter((c) => c.sentAt !== null).map((c) => c.upstream).sort();

describe('outlier ejection', () => {
  it('a replica that refuses connections is ejected after 5 failures in a row, probed back after 30 s, and ejected for twice as long when the probe fails', async () => {
    const a = await startUpstream(after(1));
    const b = await startUpstream(after(1));
    open.push(a, b);
    const { proxy, log, ejected, reports, send, advance } = await setup([a.url, b.url, `http://127.0.0.1:${await deadPort()}`]);
    await send(4);
    expect(log).toEqual([]);
    await send(1);
    expect(ejected).toEqual([{ upstream: 'u2', failures: 5, duration: 30_000, ejections: 1 }]);
    expect(proxy.metrics().upstreams.u2).toMatchObject({ ejected: true, ejections: 1 });
    await send(3);
    for (const r of reports.slice(-3)) expect(sentTo(r)).toEqual(['u0', 'u1']);
    advance(30_001);
    await send(1);
    expect(log).toEqual(['ejected u2', 'restored u2', 'ejected u2']);
    expect(sentTo(reports.at(-1)!)).toEqual(['u0', 'u1', 'u2']);
    expect(ejected[1]).toEqual({ upstream: 'u2', failures: 1, duration: 60_000, ejections: 2 });
    expect(proxy.metrics().upstreams.u2!.ejected).toBe(true);
  });

  it('a replica answering 5xx is ejected too, and one that recovers passes its probation and stays', async () => {
    let failing = true;
    const flaky = await startUpstream((_req, res) => {
      res.writeHead(failing ? 503 : 200, { 'content-type': 'application/json' });
      res.end('{}');
    });
    const good = await startUpstream(after(20));
    open.push(flaky, good);
    const { log, reports, send, advance } = await setup([flaky.url, good.url], { ejection: { consecutiveFailures: 2, baseEjectionTime: 1000 } });
    await send(2);
    expect(log).toEqual(['ejected u0']);
    failing = false;
    advance(1001);
    await send(3);
    expect(log).toEqual(['ejected u0', 'restored u0']);
    for (const r of reports.slice(-3)) expect(sentTo(r)).toEqual(['u0', 'u1']);
  });

  it('never ejects more than maxEjectedPercent of the upstreams (50% by default)', async () => {
    const a = await startUpstream(after(1));
    open.push(a);
    const { log, send, proxy } = await setup([a.url, `http://127.0.0.1:${await deadPort()}`, `http://127.0.0.1:${await deadPort()}`]);
    await send(8);
    expect(log).toEqual(['ejected u1']);
    expect(proxy.metrics().upstreams.u2).toMatchObject({ ejected: false, ejections: 0 });
  });

  it('a copy still waiting at the timeout is a failure; a loser stopped long before it is not, though the winner’s body outlived the timeout', async () => {
    // On a virtual clock: the timeout comes when the test moves the clock, after what it waits for.
    const hang = await startUpstream(() => undefined); // never answers
    const trickle = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first bytes, and never the rest');
    });
    const slow = await startUpstream(after(60_000));
    open.push(hang, trickle, slow);
    const vt = new VirtualTime();
    const timedOut = await setup([hang.url, `${hang.url}/x`], withScheduler({ timeout: 30_000, ejection: { consecutiveFailures: 1 } }, vt));
    const answer = client.send(`${timedOut.gw.url}/`);
    await eventually(() => hang.seen.length === 2);
    await vt.advance(30_000);
    expect((await answer).status).toBe(504);
    await eventually(() => timedOut.reports[0]);
    expect(timedOut.reports[0]!.copies.map((c) => [c.outcome, c.error])).toEqual([
      ['stopped', 'timeout'],
      ['stopped', 'timeout'],
    ]);
    expect(timedOut.log).toEqual(['ejected u0']); // one of two: the 50% cap
    const vt2 = new VirtualTime();
    const outlived = await setup([trickle.url, slow.url], withScheduler({ timeout: 30_000, ejection: { consecutiveFailures: 1 } }, vt2));
    // The winner's head is at the client before the clock moves.
    const req = http.get(`${outlived.gw.url}/`);
    const [head] = (await once(req, 'response')) as [http.IncomingMessage];
    head.on('error', () => undefined);
    head.resume();
    await vt2.advance(30_000); // the losers' grace, then the timeout: the body is cut off
    const r = await eventually(() => outlived.reports[0]);
    req.destroy();
    expect(r.outcome).toBe('timeout');
    expect(r.copies.map((c) => [c.upstream, c.outcome, c.error])).toEqual([
      ['u0', 'won', 'body-timeout'],
      ['u1', 'stopped', null],
    ]);
    expect(outlived.log).toEqual([]);
  });

  it('a slow copy stopped because another won counts neither way', async () => {
    const fast = await startUpstream(after(1));
    const slow = await startUpstream(after(300));
    open.push(fast, slow);
    const { log, send } = await setup([fast.url, slow.url], { ejection: { consecutiveFailures: 1 } });
    await send(3);
    expect(log).toEqual([]);
  });

  it('`ejection: false` keeps sending copies to a failing replica', async () => {
    const a = await startUpstream(after(1));
    open.push(a);
    const { log, send, reports } = await setup([a.url, `http://127.0.0.1:${await deadPort()}`], { ejection: false });
    await send(7);
    expect(log).toEqual([]);
    expect(sentTo(reports.at(-1)!)).toEqual(['u0', 'u1']);
  });

  it('with maxEjectedPercent 100 and every replica ejected, a request gets 503 RP_ERR_NO_UPSTREAM until one is back', async () => {
    const { proxy, gw, advance } = await setup([`http://127.0.0.1:${await deadPort()}`], { ejection: { consecutiveFailures: 1, maxEjectedPercent: 100, baseEjectionTime: 5000 } });
    const first = await client.send(`${gw.url}/`);
    expect(first.status).toBe(502);
    await eventually(() => proxy.metrics().upstreams.u0!.ejected || undefined);
    const refused = await client.send(`${gw.url}/`);
    expect(refused.status).toBe(503);
    expect(refused.json()).toMatchObject({ code: 'RP_ERR_NO_UPSTREAM' });
    advance(5001);
    const probed = await client.send(`${gw.url}/`);
    expect(probed.status).toBe(502);
    expect(probed.json()).toMatchObject({ code: 'RP_ERR_UPSTREAMS_FAILED' });
  });
});

describe('outlier ejection with a quorum', () => {
  it('keeps at least k upstreams in, whatever maxEjectedPercent says', async () => {
    const a = await startUpstream(after(1, 200, { v: 1 }));
    const b = await startUpstream(after(1, 200, { v: 1 }));
    open.push(a, b);
    const dead = `http://127.0.0.1:${await deadPort()}`;
    const two = await setup([a.url, b.url, dead], { select: { quorum: 2 }, ejection: { consecutiveFailures: 1, maxEjectedPercent: 100 } });
    const three = await setup([a.url, b.url, dead], { select: { quorum: 3 }, ejection: { consecutiveFailures: 1, maxEjectedPercent: 100 } });
    for (let i = 0; i < 3; i++) {
      expect((await client.send(`${two.gw.url}/`)).status).toBe(200);
      // A quorum of 3 with one replica down fails, but ejecting it would leave no quorum possible at all.
      const res = await client.send(`${three.gw.url}/`);
      expect(res.json()).toMatchObject({ code: 'RP_ERR_NO_QUORUM' });
    }
    await eventually(() => (three.reports.length === 3 && two.reports.length === 3) || undefined);
    expect(two.log).toEqual(['ejected u2']);
    expect(three.log).toEqual([]);
  });
});

describe('Ejector: stale reports, probation and the streak (pure logic, injected clock)', () => {
  const ups = ['a', 'b', 'c'].map((id) => ({ id, label: id, origin: 'http://127.0.0.1', prefix: '' }));
  function make(settings: Partial<{ consecutiveFailures: number; baseEjectionTime: number; maxEjectionTime: number }> = {}) {
    let t = 0;
    const log: string[] = [];
    const ej = new Ejector(
      { consecutiveFailures: 1, baseEjectionTime: 100, maxEjectionTime: 10_000, maxEjectedPercent: 50, keep: 0, ...settings },
      ups,
      () => t,
      (e) => log.push(`ejected ${e.upstream} for ${e.duration}`),
      (e) => log.push(`restored ${e.upstream}`),
    );
    const report = (outcome: 'failed' | 'won'): RaceReport =>
      ({ outcome: 'won', copies: [{ upstream: 'a', outcome, status: outcome === 'won' ? 200 : null, error: outcome === 'failed' ? 'ECONNREFUSED' : null }] }) as unknown as RaceReport;
    /** Plans a race now (as the proxy does) and returns how to report it later. */
    const plan = () => {
      ej.available(ups);
      const epoch = ej.epoch;
      return (outcome: 'failed' | 'won') => ej.record(report(outcome), epoch);
    };
    return { ej, log, plan, at: (ms: number) => void (t = ms) };
  }

  it('a copy planned before an ejection or a return is not judged when it ends after it', () => {
    const { log, plan, at } = make();
    const early = plan();
    plan()('failed'); // ejected at 0 for 100
    at(150);
    const probe = plan(); // restored at 150: on probation
    early('failed'); // planned before the ejection: says nothing of now
    expect(log).toEqual(['ejected a for 100', 'restored a']);
    probe('failed'); // the probe failed: ejected again, twice as long
    expect(log).toEqual(['ejected a for 100', 'restored a', 'ejected a for 200']);
  });

  it('probation ends with its first judged success, or after one base ejection time', () => {
    const { log, plan, at } = make({ consecutiveFailures: 2 });
    plan()('failed');
    plan()('failed'); // ejected at 0 for 100
    at(150);
    plan(); // restored
    at(300); // > 150 + 100: probation over, failures count from zero again
    plan()('failed');
    expect(log).toEqual(['ejected a for 100', 'restored a']);
    plan()('failed'); // the second failure in a row
    expect(log).toEqual(['ejected a for 100', 'restored a', 'ejected a for 100']);
  });

  it('a winner whose body broke is a failure; one still streaming at the timeout is not judged', () => {
    const broken = { outcome: 'broken', copies: [{ upstream: 'a', outcome: 'won', status: 200, error: 'ECONNRESET' }] } as unknown as RaceReport;
    const streaming = { outcome: 'timeout', copies: [{ upstream: 'a', outcome: 'won', status: 200, error: 'body-timeout' }] } as unknown as RaceReport;
    const a = make();
    a.ej.record(streaming, a.ej.epoch);
    expect(a.log).toEqual([]);
    a.ej.record(broken, a.ej.epoch);
    expect(a.log).toEqual(['ejected a for 100']);
  });

  it("a worker's 503 for its session store is not judged when no copy of the request got through; it is when another did", () => {
    const down = (upstream: string) => ({ upstream, outcome: 'rejected', status: 503, error: null, storeUnavailable: true });
    const app503 = (upstream: string) => ({ upstream, outcome: 'rejected', status: 503, error: null });
    const ok = (upstream: string) => ({ upstream, outcome: 'won', status: 200, error: null });
    // The store is down for every replica: nobody is ejected.
    const all = make();
    all.ej.record({ outcome: 'failed', copies: [down('a'), down('b'), down('c')] } as unknown as RaceReport, all.ej.epoch);
    expect(all.log).toEqual([]);
    // A copy that failed otherwise is no answer that got through: still not judged.
    const mixed = make();
    mixed.ej.record({ outcome: 'failed', copies: [down('a'), app503('b')] } as unknown as RaceReport, mixed.ej.epoch);
    expect(mixed.log).toEqual(['ejected b for 100']);
    // Another replica's copy got an answer through the store: a's store is the one failing.
    const alone = make();
    alone.ej.record({ outcome: 'won', copies: [down('a'), ok('b')] } as unknown as RaceReport, alone.ej.epoch);
    expect(alone.log).toEqual(['ejected a for 100']);
  });

  it("an update's copy given up at the per-try timeout is not judged (it may wait for a claim another holds); a read's is", () => {
    const givenUp = (update: boolean) => ({ outcome: 'outcome-unknown', update, copies: [{ upstream: 'a', outcome: 'failed', status: null, error: 'per-try-timeout' }] }) as unknown as RaceReport;
    const upd = make();
    upd.ej.record(givenUp(true), upd.ej.epoch);
    expect(upd.log).toEqual([]);
    const read = make();
    read.ej.record(givenUp(false), read.ej.epoch);
    expect(read.log).toEqual(['ejected a for 100']);
  });

  it('a copy marked `timeout` is a failure, whether it never answered or its body stalled', () => {
    const never = { outcome: 'timeout', copies: [{ upstream: 'a', outcome: 'stopped', status: null, error: 'timeout' }] } as unknown as RaceReport;
    const stalled = { outcome: 'timeout', copies: [{ upstream: 'a', outcome: 'drained', status: 200, error: 'timeout' }] } as unknown as RaceReport;
    for (const report of [never, stalled]) {
      const { ej, log } = make();
      ej.record(report, ej.epoch);
      expect(log).toEqual(['ejected a for 100']);
    }
  });

  it('the streak starts again after a healthy spell longer than the last ejection', () => {
    const { log, plan, at } = make();
    plan()('failed'); // for 100
    at(150);
    plan()('won'); // back, passes probation
    at(400); // healthy for 250 > 100
    plan()('failed');
    expect(log).toEqual(['ejected a for 100', 'restored a', 'ejected a for 100']);
  });
});
