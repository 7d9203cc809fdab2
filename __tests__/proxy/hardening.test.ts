import { gzipSync } from 'node:zlib';
import express from 'express';
import { afterAll, describe, expect, it } from '@jest/globals';
import { MemorySessionStore, redundantProxy, type ProxyErrorEvent, type RaceReport, type UpstreamEjectedEvent } from '../../lib/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { eventually } from '../helpers/replica.js';
import { testClient } from '../helpers/client.js';
import { frameworks, mountGateway, raceFixture } from '../helpers/gateway.js';
import { after, listen, rawRequest, rawUpstream, startUpstream } from '../helpers/upstream.js';

// What a hostile client or a misconfigured replica can do, and what it no longer can.

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

/** A replica whose worker refuses every copy at once, as one with a wrong or rotated secret does. */
const refusing = after(0, 401, { code: 'RP_ERR_BAD_SIGNATURE', message: 'copy refused: its signature does not match' }, { 'x-redundant-worker': '1', 'x-redundant-refused': 'RP_ERR_BAD_SIGNATURE' });

describe.each(frameworks)('hardening (%s)', (kind) => {
  it("a replica that refuses the proxy's copies never answers a request: reads fail over, it is reported once and ejected", async () => {
    const { gw, proxy, errors, reports } = await raceFixture(open, kind, [refusing, after(15, 200, { ok: true })], { timeout: 3000 });
    const ejected: UpstreamEjectedEvent[] = [];
    proxy.on('upstream:ejected', (e) => ejected.push(e));
    for (let i = 0; i < 20; i++) {
      const res = await client.send(`${gw.url}/read`);
      expect(res.status).toBe(200);
      expect(res.headers['x-redundant-served-by']).toBe('u1');
    }
    const refusals = errors.filter((e: ProxyErrorEvent) => e.source === 'upstream');
    expect(refusals).toHaveLength(1);
    expect(String((refusals[0]!.error as Error).message)).toMatch(/upstream "u0" refuses .*RP_ERR_BAD_SIGNATURE/);
    expect(ejected.map((e) => e.upstream)).toEqual(['u0']);
    const first = reports[0]!.copies.find((c) => c.upstream === 'u0')!;
    expect(first.outcome).toBe('failed');
    expect(first.error).toBe('refused: RP_ERR_BAD_SIGNATURE');
  });

  it('every replica refusing: 502, never the 401', async () => {
    const { gw } = await raceFixture(open, kind, [refusing, refusing], { timeout: 3000 });
    const res = await client.send(`${gw.url}/read`);
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_UPSTREAMS_FAILED' });
  });

  it('OPTIONS * is answered 400 locally, sends nothing, and ejects nobody', async () => {
    const { gw, ups, proxy } = await raceFixture(open, kind, [after(0), after(0), after(0), after(0)], { timeout: 3000 });
    for (let i = 0; i < 12; i++) {
      const res = await rawRequest(gw.url, 'OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      expect(res.status).toBe(400);
      expect(JSON.parse(res.body)).toMatchObject({ code: 'RP_ERR_BAD_TARGET' });
    }
    for (const u of ups) expect(u.seen).toHaveLength(0);
    expect(Object.values(proxy.metrics().upstreams).some((u) => u.ejected)).toBe(false);
    expect((await client.send(`${gw.url}/still-fine`)).status).toBe(200);
  });

  it('dot-segments, literal or encoded as any upstream may read them, are refused with 400 and reach no upstream', async () => {
    const up = await startUpstream(after(0));
    open.push(up);
    const proxy = redundantProxy({ upstreams: [{ id: 'api', url: `${up.url}/api` }] });
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    const encoded = ['/..;/secret', '/a/..;jsessionid=1/secret', '/..%2fsecret', '/%2e%2e%2fsecret', '/..%5csecret', '/a\\..\\secret', '/%252e%252e/secret', '/..%252fsecret', '/.../secret', '/..%20/secret', '/%25%32%65%25%32%65/secret', '/%25252e%25252e/secret', '/a/%2525252e/b'];
    for (const target of ['/../secret', '/a/../../secret', '/%2e%2e/secret', '/a/%2E%2e/b', '/a/./b', '/a/%2e/b?x=1', ...encoded]) {
      const res = await rawRequest(gw.url, `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      expect([target, res.status, JSON.parse(res.body).code]).toEqual([target, 400, 'RP_ERR_BAD_TARGET']);
    }
    expect(up.seen).toHaveLength(0);
    // Dots inside a segment are just names.
    const fine = await rawRequest(gw.url, 'GET /v1.2/..hidden/a..b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(fine.status).toBe(200);
    expect(up.seen[0]!.url).toBe('/api/v1.2/..hidden/a..b');
    // So are encoded slashes and percent signs between names.
    const names = await rawRequest(gw.url, 'GET /files/a%2Fb/100%25/x;v=1.2/caf%C3%A9/100%2541/%252541 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(names.status).toBe(200);
    expect(up.seen[1]!.url).toBe('/api/files/a%2Fb/100%25/x;v=1.2/caf%C3%A9/100%2541/%252541');
  });

  it('an absolute-form target is reduced to origin-form: its host never reaches the upstream', async () => {
    const up = await startUpstream(after(0));
    open.push(up);
    const proxy = redundantProxy({ upstreams: [{ id: 'api', url: `${up.url}/api` }] });
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    const res = await rawRequest(gw.url, 'GET http://evil.example/x?y=1 HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n');
    expect(res.status).toBe(200);
    expect(up.seen[0]!.url).toBe('/api/x?y=1');
    expect(up.seen[0]!.headers.host).not.toBe('evil.example');
    // The target's authority is the client's host (RFC 9112 §3.2.2: its Host header is ignored).
    await rawRequest(gw.url, 'GET http://shop.example:8080/x HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n');
    expect(up.seen[1]!.headers['x-forwarded-host']).toBe('shop.example:8080');
  });
});

describe('an error answer passed through without a body', () => {
  it('keeps a 304’s and a HEAD’s framing headers, gives a 204 none, and never fails the copy for the body a 304 states and does not carry', async () => {
    const heads = ['HTTP/1.1 304 Not Modified\r\nETag: "e"\r\nContent-Length: 5\r\n\r\n', 'HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n', 'HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100\r\n\r\n'];
    const seen: Array<[number, string | undefined, string]> = [];
    for (const [i, head] of heads.entries()) {
      const server = await rawUpstream(head);
      open.push(server);
      // A 304 and a 204 refused by accept, a 503 as usual: each passed through, the only answer there is.
      const proxy = redundantProxy({ upstreams: [server.url], accept: (r) => r.status === 200, timeout: 2000 });
      const gw = await mountGateway('node', proxy);
      open.push(gw, proxy);
      const reports: RaceReport[] = [];
      proxy.on('race:end', (r) => reports.push(r));
      const res = await rawRequest(gw.url, `${i === 2 ? 'HEAD' : 'GET'} /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      seen.push([res.status, res.headers['content-length'], res.body]);
      const report = await eventually(() => reports[0]);
      expect(report.copies.map((c) => [c.outcome, c.error ?? null])).toEqual([['rejected', null]]);
    }
    expect(seen).toEqual([
      [304, '5', ''],
      [204, undefined, ''],
      [503, '100', ''],
    ]);
  });
});

describe('transfer codings other than chunked', () => {
  it('a request body in one is refused with 501 RP_ERR_TRANSFER_CODING and reaches no upstream; an upstream answer in one fails its copy', async () => {
    const up = await startUpstream(after(0));
    open.push(up);
    const body = gzipSync('hidden');
    const coded = await rawUpstream(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n${body.length.toString(16)}\r\n`), body, Buffer.from('\r\n0\r\n\r\n')]));
    open.push(coded);
    const codedUrl = coded.url;
    const proxy = redundantProxy({ upstreams: [{ id: 'coded', url: codedUrl }, { id: 'plain', url: up.url }], ejection: false });
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    const reports: RaceReport[] = [];
    proxy.on('race:end', (r) => reports.push(r));

    // Its body is not read: the gateway closes the connection after answering (the client did not ask it to).
    const res = await rawRequest(gw.url, 'POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n');
    expect([res.status, JSON.parse(res.body).code, res.headers.connection]).toEqual([501, 'RP_ERR_TRANSFER_CODING', 'close']);
    expect(up.seen).toHaveLength(0);

    // Beside a plain upstream, the plain answer is the one there is.
    const read = await client.send(`${gw.url}/r`);
    expect([read.status, read.json()]).toEqual([200, { ok: true }]);
    const alone = redundantProxy({ upstreams: [{ id: 'coded', url: codedUrl }] });
    const gw2 = await mountGateway('node', alone);
    open.push(gw2, alone);
    alone.on('race:end', (r) => reports.push(r));
    const failed = await client.send(`${gw2.url}/r`);
    expect([failed.status, failed.json().code]).toEqual([502, 'RP_ERR_UPSTREAMS_FAILED']);
    expect(failed.text).not.toContain('hidden');
    const report = await eventually(() => reports.find((r) => r.copies.length === 1));
    expect(report.copies[0]).toMatchObject({ upstream: 'coded', outcome: 'failed', error: 'unsupported transfer coding: gzip' });
  });
});

describe('an internal failure', () => {
  it('is answered 500 RP_ERR_INTERNAL with the request id, in the body and x-request-id, and is an error event with that id', async () => {
    const up = await startUpstream(after(0));
    open.push(up);
    const store = new MemorySessionStore();
    open.push(store);
    // A store whose method throws instead of rejecting: a fault the proxy cannot answer for otherwise.
    store.getSession = () => {
      throw new Error('store bug');
    };
    const proxy = redundantProxy({ upstreams: [up.url], store });
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    const errors: ProxyErrorEvent[] = [];
    proxy.on('error', (e) => errors.push(e));
    const res = await client.send(`${gw.url}/x`, { headers: { cookie: 'rp_session=abcdefghijklmnopqrstuvwxyz012345' } });
    expect(res.status).toBe(500);
    const body = res.json();
    expect(body).toMatchObject({ code: 'RP_ERR_INTERNAL', requestId: expect.stringMatching(/^[0-9a-f-]{36}$/) });
    expect(res.headers['x-request-id']).toBe(body.requestId);
    expect(errors).toEqual([expect.objectContaining({ source: 'internal', requestId: body.requestId })]);
  });
});

describe('mounted under a path in Express', () => {
  it('the query follows the prefix without an inserted slash; deeper paths keep theirs', async () => {
    const up = await startUpstream(after(0));
    const bare = await startUpstream(after(0));
    open.push(up, bare);
    const proxy = redundantProxy({ upstreams: [{ id: 'api', url: `${up.url}/api` }] });
    const plain = redundantProxy({ upstreams: [{ id: 'root', url: bare.url }] });
    const app = express();
    app.use('/svc', proxy);
    app.use('/other', plain);
    const gw = await listen(app);
    open.push(gw, proxy, plain);
    await client.send(`${gw.url}/svc?lang=en`);
    await client.send(`${gw.url}/svc/?lang=en`);
    await client.send(`${gw.url}/svc/x/y?z=1`);
    await client.send(`${gw.url}/other?lang=en`);
    expect(up.seen.map((s) => s.url)).toEqual(['/api?lang=en', '/api/?lang=en', '/api/x/y?z=1']);
    expect(bare.seen.map((s) => s.url)).toEqual(['/?lang=en']);
  });
});

describe('a real worker with another secret', () => {
  it.each(['koa', 'express'] as const)('%s: its refusals fail over to the replicas that share the secret, and a 401 never reaches the client', async (kind) => {
    const { MemorySessionStore } = await import('../../lib/index.js');
    const { startReplica } = await import('../helpers/replica.js');
    const store = new MemorySessionStore();
    open.push(store);
    const wrong = await startReplica(kind, { id: 'a', store, secret: 'rotated-secret-000000000' }, () => ({ body: { by: 'a' } }));
    const right = await startReplica(kind, { id: 'b', store, secret: 'shared-secret-0000000000' }, async () => {
      await new Promise((r) => setTimeout(r, 10));
      return { body: { by: 'b' } };
    });
    open.push(wrong, right);
    const proxy = redundantProxy({ upstreams: [{ id: 'a', url: wrong.url }, { id: 'b', url: right.url }], store, secret: 'shared-secret-0000000000' });
    const errors: ProxyErrorEvent[] = [];
    proxy.on('error', (e) => errors.push(e));
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    for (let i = 0; i < 10; i++) {
      const res = await client.send(`${gw.url}/read`);
      expect(res.status).toBe(200);
      expect(res.json()).toEqual({ by: 'b' });
    }
    expect(errors.filter((e) => e.source === 'upstream')).toHaveLength(1);
    expect(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], secret: 'short-one' })).toThrow(/a string of 9 characters \(not shown\)/);
    const { redundantWorker } = await import('../../lib/index.js');
    let message = '';
    try {
      redundantWorker({ id: 'x', store, secret: 'short-one' });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/not shown/);
    expect(message).not.toContain('short-one');
  });
});
