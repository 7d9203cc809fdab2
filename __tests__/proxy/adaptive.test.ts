import { afterAll, describe, expect, it } from '@jest/globals';
import { redundantProxy, type RaceReport } from '../../lib/index.js';
import { AdaptiveDelay, HedgeBudget, hedgeQuantile, percentile } from '../../lib/proxy/hedge.js';
import { testClient } from '../helpers/client.js';
import { mountGateway } from '../helpers/gateway.js';
import { startUpstream } from '../helpers/upstream.js';

describe('adaptive hedge delay (pure logic)', () => {
  it('is Infinity (no hedging) until 16 answers were seen, then the p95', () => {
    const d = new AdaptiveDelay();
    for (let i = 1; i <= 15; i++) d.record('GET /a', i);
    expect(d.delay('GET /a')).toBe(Infinity);
    d.record('GET /a', 16);
    expect(d.delay('GET /a')).toBe(16); // p95 of 1..16 is the 16th value (ceil(0.95*16) = 16)
    for (let i = 0; i < 100; i++) d.record('GET /a', i < 95 ? 2 : 100);
    expect(d.delay('GET /a')).toBeLessThanOrEqual(100);
  });

  it('falls back to the proxy-wide p95 for a route it has not seen', () => {
    const d = new AdaptiveDelay();
    for (let i = 0; i < 40; i++) d.record(`GET /r${i % 4}`, 10);
    expect(d.delay('GET /new')).toBe(10);
  });

  it('hedges at the 1 - maxExtraLoad / 2 quantile, within p50 and p99.9', () => {
    expect(hedgeQuantile(0.1)).toBeCloseTo(0.95);
    expect(hedgeQuantile(0.01)).toBeCloseTo(0.995);
    expect(hedgeQuantile(0.25)).toBeCloseTo(0.875);
    expect(hedgeQuantile(2)).toBe(0.5);
    expect(hedgeQuantile(0)).toBe(0.999);
    // 90 fast answers and 10 slow ones: the p87.5 is a fast answer, the p95 a slow one.
    const wide = new AdaptiveDelay(hedgeQuantile(0.25));
    const narrow = new AdaptiveDelay(hedgeQuantile(0.1));
    for (let i = 0; i < 100; i++) {
      const ms = i % 10 === 9 ? 100 : 2 + (i % 10) / 10;
      wide.record('GET /a', ms);
      narrow.record('GET /a', ms);
    }
    expect(wide.delay('GET /a')).toBeCloseTo(2.8);
    expect(narrow.delay('GET /a')).toBe(100);
  });

  it('learns from first copies, counting one stopped unanswered as at least as slow as it was out', () => {
    const fast = { duration: 2, copies: [{ index: 1, sentAt: 0, latency: 2, outcome: 'won' }] };
    // A slow first copy: the hedge sent at 4 ms answered in 2 ms; the first copy was stopped, unanswered, at 6 ms.
    const hedged = {
      duration: 6,
      copies: [
        { index: 1, sentAt: 0, latency: null, outcome: 'stopped' },
        { index: 2, sentAt: 4, latency: 2, outcome: 'won' },
      ],
    };
    const d = new AdaptiveDelay(0.75);
    const answersOnly = new AdaptiveDelay(0.75);
    for (let i = 0; i < 100; i++) {
      const race = i % 3 === 2 ? hedged : fast;
      d.learn('GET /a', race, 4);
      for (const c of race.copies) if (c.latency !== null) answersOnly.record('GET /a', c.latency);
    }
    // A third of first copies are slow, and the p75 says so.
    expect(d.delay('GET /a')).toBe(6);
    // Counting every answer instead, the slow first copies are invisible: the delay drifts down to the fast answers.
    expect(answersOnly.delay('GET /a')).toBe(2);
  });

  it('leaves hedged copies out: a hedge that lost to its first copy was stopped before it could answer slowly', () => {
    const d = new AdaptiveDelay(0.5);
    for (let i = 0; i < 20; i++) {
      d.learn(
        'GET /b',
        {
          duration: 5,
          copies: [
            { index: 1, sentAt: 0, latency: 5, outcome: 'won' },
            { index: 2, sentAt: 4, latency: 0.5, outcome: 'drained' },
            { index: 3, sentAt: 4, latency: null, outcome: 'stopped' },
          ],
        },
        4,
      );
    }
    expect(d.delay('GET /b')).toBe(5);
    // A first copy stopped sooner than the delay (the client left) says nothing of the tail.
    const e = new AdaptiveDelay(0.5);
    for (let i = 0; i < 20; i++) e.learn('GET /c', { duration: 1, copies: [{ index: 1, sentAt: 0, latency: null, outcome: 'stopped' }] }, 4);
    expect(e.delay('GET /c')).toBe(Infinity);
  });

  it('percentile picks the nearest rank', () => {
    expect(percentile([5, 1, 3, 2, 4], 0.5)).toBe(3);
    expect(percentile([1], 0.99)).toBe(1);
    expect(percentile([], 0.5)).toBeNaN();
  });
});

describe('hedge budget (token bucket)', () => {
  it('allows a burst, then about maxExtraLoad hedges per request', () => {
    const b = new HedgeBudget(0.1);
    let burst = 0;
    while (b.take()) burst++;
    expect(burst).toBe(10);
    let granted = 0;
    for (let i = 0; i < 1000; i++) {
      b.deposit();
      if (b.take()) granted++;
    }
    expect(granted).toBeGreaterThanOrEqual(99);
    expect(granted).toBeLessThanOrEqual(101);
  });

  it('is unlimited with an infinite ratio', () => {
    const b = new HedgeBudget(Infinity);
    for (let i = 0; i < 1000; i++) expect(b.take()).toBe(true);
  });
});

describe('adaptive hedging through the proxy', () => {
  const client = testClient();
  afterAll(() => client.close());

  it('sends one copy while warming up, then hedges slow requests after the learned delay', async () => {
    let n = 0;
    // 5 ms answers, except every 10th request to upstream a takes 400 ms.
    const a = await startUpstream((_req, res) => void setTimeout(() => !res.destroyed && res.end('a'), n++ % 10 === 9 ? 400 : 5));
    const b = await startUpstream((_req, res) => void setTimeout(() => !res.destroyed && res.end('b'), 5));
    const proxy = redundantProxy({ upstreams: [{ id: 'a', url: a.url }, { id: 'b', url: b.url }], hedge: { delay: 'adaptive', maxExtraLoad: 0.5 } });
    const reports: RaceReport[] = [];
    proxy.on('race:end', (r) => reports.push(r));
    const gw = await mountGateway('node', proxy);
    for (let i = 0; i < 80; i++) expect((await client.send(`${gw.url}/x`)).status).toBe(200);
    // Warm-up: no hedges before 16 answers were seen.
    expect(reports.slice(0, 16).every((r) => r.copies.filter((c) => c.sentAt !== null).length === 1)).toBe(true);
    // Afterwards the slow requests were hedged and answered well before 400 ms.
    const hedged = reports.slice(16).filter((r) => r.copies.some((c) => c.hedged));
    expect(hedged.length).toBeGreaterThan(0);
    for (const r of hedged) expect(r.duration).toBeLessThan(300);
    expect(proxy.metrics().hedgeRate).toBeGreaterThan(0);
    await proxy.close();
    await gw.close();
    await a.close();
    await b.close();
  });
});
