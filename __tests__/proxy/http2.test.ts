import { constants } from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { redundantProxy, type ProxyOptions, type RaceReport } from '../../lib/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { testClient } from '../helpers/client.js';
import { mountGateway } from '../helpers/gateway.js';
import { eventually } from '../helpers/replica.js';
import { h2Upstream, httpsUpstream, makePki, type H2Upstream, type TestPki } from '../helpers/tls-certs.js';

// HTTP/2 to `https:` upstreams (`http2: true`, undici's `allowH2`), against
// node:http2 servers that speak nothing else (`allowHTTP1: false`). What it
// buys: a loser is stopped by resetting its stream, and the one TLS
// connection to each upstream stays up for the next request.

const client = testClient();
const open = closeAfterEach();
let pki: TestPki;
let ups: H2Upstream[];

/** `/race/<n>`: upstream n % 3 answers at once; the others never answer (they lose and are stopped). */
const winnerOf = (path: string) => Number(/\/race\/(\d+)/.exec(path)?.[1] ?? 0) % 3;

beforeAll(async () => {
  pki = await makePki();
  ups = [];
  for (let i = 0; i < 3; i++) ups.push(await h2Upstream(`h${i}`, pki.server, (path) => (path.startsWith('/race/') ? (winnerOf(path) === i ? 1 : Infinity) : 1)));
});
afterAll(async () => {
  await client.close();
  await Promise.all(ups.map((u) => u.close()));
});

async function gateway(options: ProxyOptions) {
  const proxy = redundantProxy(options);
  const reports: RaceReport[] = [];
  proxy.on('race:end', (r) => reports.push(r));
  const gw = await mountGateway('node', proxy);
  open.push(gw, proxy);
  return { gw, reports };
}

describe('HTTP/2 to https: upstreams', () => {
  it('races copies over HTTP/2; a stopped loser is a stream reset and each upstream keeps its one TLS connection', async () => {
    const before = ups.map((u) => u.connections());
    const seen = ups.map((u) => u.streams.length);
    const { gw, reports } = await gateway({ upstreams: ups.map((u, i) => ({ id: `h${i}`, url: u.url })), tls: { ca: pki.ca }, http2: true, copies: 3 });
    const races = 6;
    for (let n = 0; n < races; n++) {
      const res = await client.send(`${gw.url}/race/${n}`);
      expect(res.status).toBe(200);
      expect(res.json()).toEqual({ name: `h${n % 3}` });
      expect(res.headers['x-redundant-served-by']).toBe(`h${n % 3}`);
    }
    await eventually(() => reports.length === races || undefined);
    for (const r of reports) expect(r.copies.map((c) => c.outcome).sort()).toEqual(['stopped', 'stopped', 'won']);
    // Every loser's stream was reset before its answer, the winner's ended normally…
    for (const [i, u] of ups.entries()) {
      const streams = u.streams.slice(seen[i]);
      expect(streams).toHaveLength(races);
      const resets = await Promise.all(streams.map((s) => s.reset));
      // undici resets a stopped stream with RST_STREAM(NO_ERROR).
      expect(resets).toEqual(streams.map((s) => (winnerOf(s.path) === i ? null : constants.NGHTTP2_NO_ERROR)));
    }
    // …and no upstream accepted a second connection: 4 stopped losers each, one TLS connection each.
    expect(ups.map((u, i) => u.connections() - before[i]!)).toEqual([1, 1, 1]);
  });

  it('requests in flight at once share the one connection (streams, not connections)', async () => {
    const { gw } = await gateway({ upstreams: ups.map((u, i) => ({ id: `h${i}`, url: u.url })), tls: { ca: pki.ca }, http2: true });
    // Connected first: requests that come while a connection is still being
    // made each open another (undici's Pool), up to connections / 100.
    expect((await client.send(`${gw.url}/warm`)).status).toBe(200);
    const before = ups.map((u) => u.connections());
    const answers = await Promise.all(Array.from({ length: 12 }, (_, n) => client.send(`${gw.url}/race/${n}`)));
    expect(answers.map((a) => a.status)).toEqual(Array(12).fill(200));
    expect(ups.map((u, i) => u.connections() - before[i]!)).toEqual([0, 0, 0]);
  });

  it('without http2 the proxy cannot reach an HTTP/2-only upstream', async () => {
    const { gw, reports } = await gateway({ upstreams: [{ id: 'h0', url: ups[0]!.url }], tls: { ca: pki.ca } });
    const res = await client.send(`${gw.url}/x`);
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_UPSTREAMS_FAILED' });
    expect((await eventually(() => reports[0])).copies[0]!.outcome).toBe('failed');
  });

  it('an upstream that chooses HTTP/1.1 fails its copies with RP_ERR_UPSTREAM_NOT_H2; per upstream, http2: false keeps it on HTTP/1.1', async () => {
    const h1 = await httpsUpstream('h1', pki.server);
    open.push(h1);
    const strict = await gateway({ upstreams: [{ id: 'h1', url: h1.url }], tls: { ca: pki.ca }, http2: true });
    const res = await client.send(`${strict.gw.url}/x`);
    expect(res.status).toBe(502);
    expect((await eventually(() => strict.reports[0])).copies[0]).toMatchObject({ outcome: 'failed', error: 'RP_ERR_UPSTREAM_NOT_H2' });

    const mixed = await gateway({ upstreams: [{ id: 'h1', url: h1.url, http2: false }, { id: 'h0', url: ups[0]!.url }], tls: { ca: pki.ca }, http2: true });
    const both = await Promise.all([client.send(`${mixed.gw.url}/x`), client.send(`${mixed.gw.url}/y`)]);
    expect(both.map((b) => b.status)).toEqual([200, 200]);
    const reports = await eventually(() => (mixed.reports.length === 2 ? mixed.reports : undefined));
    // Both upstreams answered: neither copy failed.
    for (const r of reports) for (const c of r.copies) expect(c.outcome).not.toBe('failed');
  });
});
