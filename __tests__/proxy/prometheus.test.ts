import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from '@jest/globals';
import { Counter, Registry } from 'prom-client';
import { redundantProxy, type ProxyOptions, type RaceReport } from '../../lib/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { testClient } from '../helpers/client.js';
import { mountGateway } from '../helpers/gateway.js';
import { eventually } from '../helpers/replica.js';
import { after, deadPort, startUpstream } from '../helpers/upstream.js';
import { withScheduler } from '../../lib/time.js';
import { VirtualTime } from '../helpers/virtual-time.js';

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

async function gateway(urls: string[], options: Partial<ProxyOptions>) {
  const proxy = redundantProxy({ upstreams: urls.map((url, i) => ({ id: `u${i}`, url })), ...options });
  const gw = await mountGateway('node', proxy);
  open.push(gw, proxy);
  const reports: RaceReport[] = [];
  proxy.on('race:end', (r) => reports.push(r));
  return { proxy, gw, reports };
}

/** One sample's value from the registry's text exposition, or undefined. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('prometheus: a prom-client registry', () => {
  it('counts requests, copies by upstream and outcome, race durations and ejections', async () => {
    // On a virtual clock: the slow upstream never answers before the
    // losers' grace ends, however busy the machine; the grace ends when the test says.
    const vt = new VirtualTime();
    const fast = await startUpstream(after(1));
    const slow = await startUpstream(after(60_000));
    open.push(fast, slow);
    const registry = new Registry();
    const dead = `http://127.0.0.1:${await deadPort()}`;
    const { gw, reports } = await gateway([fast.url, slow.url, dead], withScheduler({ prometheus: { registry }, ejection: { consecutiveFailures: 2 } }, vt));
    for (let i = 1; i <= 3; i++) {
      expect((await client.send(`${gw.url}/`)).status).toBe(200);
      await vt.advance(10); // the losers' grace
      await eventually(() => reports.length === i || undefined); // judged before the next request
    }
    const text = await registry.metrics();
    expect(sample(text, 'redundant_proxy_requests_total{outcome="won"}')).toBe(3);
    expect(sample(text, 'redundant_proxy_copies_total{upstream="u0",outcome="won"}')).toBe(3);
    expect(sample(text, 'redundant_proxy_copies_total{upstream="u1",outcome="stopped"}')).toBe(3);
    // Two failures eject u2: the third request sent it no copy.
    expect(sample(text, 'redundant_proxy_copies_total{upstream="u2",outcome="failed"}')).toBe(2);
    expect(sample(text, 'redundant_proxy_upstream_ejected{upstream="u2"}')).toBe(1);
    expect(sample(text, 'redundant_proxy_upstream_ejected{upstream="u0"}')).toBe(0);
    expect(sample(text, 'redundant_proxy_upstream_ejections_total{upstream="u2"}')).toBe(1);
    expect(sample(text, 'redundant_proxy_race_duration_seconds_count{outcome="won"}')).toBe(3);
    expect(sample(text, 'redundant_proxy_race_duration_seconds_bucket{le="10",outcome="won"}')).toBe(3);
  });

  it('several proxies share one registry, told apart by their labels; other label names are refused', async () => {
    const up = await startUpstream(after(1));
    open.push(up);
    const registry = new Registry();
    const a = await gateway([up.url], { prometheus: { registry, prefix: 'gw_', labels: { route: 'a' } } });
    const b = await gateway([up.url], { prometheus: { registry, prefix: 'gw_', labels: { route: 'b' } } });
    await client.send(`${a.gw.url}/`);
    await client.send(`${b.gw.url}/`);
    await client.send(`${b.gw.url}/`);
    await eventually(() => (a.reports.length === 1 && b.reports.length === 2) || undefined);
    const text = await registry.metrics();
    expect(sample(text, 'gw_requests_total{route="a",outcome="won"}')).toBe(1);
    expect(sample(text, 'gw_requests_total{route="b",outcome="won"}')).toBe(2);
    expect(() => redundantProxy({ upstreams: [up.url], prometheus: { registry, prefix: 'gw_', labels: { team: 'x' } } })).toThrow(/prometheus\.labels.*gw_\*/);
    expect(() => redundantProxy({ upstreams: [up.url], prometheus: { registry, prefix: 'gw_', labels: { route: 'a' }, buckets: [1, 2] } })).toThrow(/prometheus\.buckets/);
  });

  it('a reload: the new proxy opens before the old one closes, with the same labels; the series go on, and leave when the last one closes', async () => {
    const up = await startUpstream(after(1));
    open.push(up);
    const registry = new Registry();
    const won = async () => sample(await registry.metrics(), 'redundant_proxy_requests_total{outcome="won"}');
    const old = redundantProxy({ upstreams: [{ id: 'u', url: up.url }], prometheus: { registry } });
    const gwOld = await mountGateway('node', old);
    open.push(gwOld);
    await client.send(`${gwOld.url}/`);
    await eventually(async () => (await won()) === 1 || undefined);
    const next = redundantProxy({ upstreams: [{ id: 'u', url: up.url }], prometheus: { registry } });
    const gwNext = await mountGateway('node', next);
    open.push(gwNext);
    await old.close();
    expect(await won()).toBe(1); // the new proxy still counts there
    await client.send(`${gwNext.url}/`);
    await eventually(async () => (await won()) === 2 || undefined);
    await next.close();
    const closed = await registry.metrics();
    expect(closed).not.toMatch(/^redundant_proxy_requests_total\{/m);
    expect(closed).not.toMatch(/^redundant_proxy_copies_total\{/m);
    expect(closed).not.toMatch(/^redundant_proxy_upstream_ejected\{/m);
  });

  it('an upstream dropped in a reload leaves the registry when the old proxy closes; the others stay', async () => {
    const registry = new Registry();
    const gauge = async (id: string) => sample(await registry.metrics(), `redundant_proxy_upstream_ejected{upstream="${id}"}`);
    const old = redundantProxy({ upstreams: [{ id: 'a', url: 'http://127.0.0.1:1' }, { id: 'b', url: 'http://127.0.0.1:2' }], prometheus: { registry } });
    const next = redundantProxy({ upstreams: [{ id: 'a', url: 'http://127.0.0.1:1' }, { id: 'c', url: 'http://127.0.0.1:3' }], prometheus: { registry } });
    open.push(next);
    expect([await gauge('a'), await gauge('b'), await gauge('c')]).toEqual([0, 0, 0]);
    await old.close();
    expect([await gauge('a'), await gauge('b'), await gauge('c')]).toEqual([0, undefined, 0]);
  });

  it('after registry.clear(), a new proxy registers its metrics again', async () => {
    const registry = new Registry();
    const first = redundantProxy({ upstreams: ['http://127.0.0.1:1'], prometheus: { registry } });
    await first.close();
    registry.clear();
    const second = redundantProxy({ upstreams: [{ id: 'x', url: 'http://127.0.0.1:1' }], prometheus: { registry } });
    open.push(second);
    expect(registry.getMetricsAsArray().map((m) => m.name)).toContain('redundant_proxy_requests_total');
    expect(sample(await registry.metrics(), 'redundant_proxy_upstream_ejected{upstream="x"}')).toBe(0);
  });

  it('a metric name that something else registered is refused before anything is registered', () => {
    const registry = new Registry();
    new Counter({ name: 'redundant_proxy_copies_total', help: 'not ours', registers: [registry] });
    expect(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], prometheus: { registry } })).toThrow(expect.objectContaining({ option: 'prometheus.prefix' }));
    expect(registry.getMetricsAsArray().map((m) => m.name)).toEqual(['redundant_proxy_copies_total']);
  });

  it('the ejected gauge follows the clock when the registry is read, without waiting for a request', async () => {
    const up = await startUpstream(after(1));
    open.push(up);
    const registry = new Registry();
    let skew = 0;
    const proxy = redundantProxy({
      upstreams: [{ id: 'up', url: up.url }, { id: 'down', url: `http://127.0.0.1:${await deadPort()}` }],
      prometheus: { registry },
      ejection: { consecutiveFailures: 1, baseEjectionTime: 1000 },
      now: () => performance.now() + skew,
    });
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    await client.send(`${gw.url}/`);
    await eventually(() => proxy.metrics().upstreams.down!.ejected || undefined);
    expect(sample(await registry.metrics(), 'redundant_proxy_upstream_ejected{upstream="down"}')).toBe(1);
    skew += 1001;
    expect(sample(await registry.metrics(), 'redundant_proxy_upstream_ejected{upstream="down"}')).toBe(0);
  });

  it.each([
    ['a registry that is not one', { registry: {} }, 'prometheus.registry'],
    ['a bad prefix', { registry: new Registry(), prefix: '9bad' }, 'prometheus.prefix'],
    ['a label the proxy sets itself', { registry: new Registry(), labels: { outcome: 'x' } }, 'prometheus.labels.outcome'],
    ['a label prom-client sets itself', { registry: new Registry(), labels: { le: 'x' } }, 'prometheus.labels.le'],
    ['a label value that is not a string', { registry: new Registry(), labels: { route: 3 } }, 'prometheus.labels.route'],
    ['decreasing buckets', { registry: new Registry(), buckets: [1, 0.5] }, 'prometheus.buckets'],
    ['a misspelt key', { registry: new Registry(), registery: 1 }, 'prometheus.registery'],
    ['a string', 'yes', 'prometheus'],
  ])('%s is refused, naming the option', (_what, prometheus, name) => {
    expect(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], prometheus: prometheus as never })).toThrow(expect.objectContaining({ code: 'RP_ERR_INVALID_OPTION', option: name }));
  });

  it('without prom-client installed, the option is refused with what to install', () => {
    // The built package, beside its dependencies but without prom-client.
    const dir = mkdtempSync(join(tmpdir(), 'rp-noprom-'));
    try {
      mkdirSync(join(dir, 'node_modules'));
      for (const dep of ['undici', 'lru-cache']) symlinkSync(resolve('node_modules', dep), join(dir, 'node_modules', dep));
      cpSync(resolve('dist'), join(dir, 'dist'), { recursive: true });
      const out = execFileSync(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `const { redundantProxy } = await import(${JSON.stringify(join(dir, 'dist', 'index.js'))});
           try { redundantProxy({ upstreams: ['http://127.0.0.1:1'], prometheus: { registry: { getSingleMetric() {}, registerMetric() {} } } }); console.log('accepted'); }
           catch (err) { console.log(JSON.stringify({ code: err.code, option: err.option, message: err.message })); }`,
        ],
        { encoding: 'utf8' },
      );
      expect(JSON.parse(out)).toMatchObject({ code: 'RP_ERR_INVALID_OPTION', option: 'prometheus', message: expect.stringMatching(/npm install prom-client/) });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
