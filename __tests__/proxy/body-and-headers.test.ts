import { createHash, randomBytes } from 'node:crypto';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from '@jest/globals';
import express from 'express';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { redundantProxy } from '../../lib/index.js';
import { testClient } from '../helpers/client.js';
import { frameworks, mountGateway, type Framework } from '../helpers/gateway.js';
import { after, rawRequest, startUpstream, type TestUpstream } from '../helpers/upstream.js';
import { closeAfterEach } from '../helpers/cleanup.js';

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

async function upstreams(n: number, behaviour = after(1)): Promise<TestUpstream[]> {
  const ups: TestUpstream[] = [];
  for (let i = 0; i < n; i++) {
    const u = await startUpstream(behaviour);
    ups.push(u);
    open.push(u);
  }
  return ups;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** `body` as a chunked body of one chunk. */
const oneChunk = (body: Buffer) => Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from('\r\n0\r\n\r\n')]);

/** A body parser before the proxy that reads the body whole and keeps `keep(bytes)` as `req.rawBody`. */
function keepsRawBody(keep: (bytes: Buffer) => Buffer | string): express.RequestHandler {
  return (req, _res, next) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      (req as unknown as { rawBody: Buffer | string }).rawBody = keep(Buffer.concat(chunks));
      next();
    });
  };
}

/** A raw `GET /h` with Host gateway.example and these header lines, through a proxy to `ups` in a `kind` gateway. */
async function rawGet(kind: Framework, ups: TestUpstream[], lines: string[]) {
  const proxy = redundantProxy({ upstreams: ups.map((u) => u.url) });
  const gw = await mountGateway(kind, proxy);
  open.push(gw, proxy);
  return rawRequest(gw.url, ['GET /h HTTP/1.1', 'Host: gateway.example', ...lines, '', ''].join('\r\n'));
}

describe.each(frameworks)('request bodies (%s)', (kind) => {
  it('a 1 MiB body reaches every copy byte for byte', async () => {
    // Each upstream answers a while after the body is in, so no copy is stopped mid-body.
    const ups = await upstreams(3, after(200));
    // Reads are raced; a body on a read (e.g. a search POST marked as read) must reach all copies.
    const proxy = redundantProxy({ upstreams: ups.map((u) => u.url), isUpdate: () => false });
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    const body = randomBytes(1024 * 1024);
    const res = await client.send(`${gw.url}/search`, { method: 'POST', body, headers: { 'content-type': 'application/octet-stream' } });
    expect(res.status).toBe(200);
    for (const u of ups) {
      expect(u.seen).toHaveLength(1);
      expect(u.seen[0]!.body.length).toBe(body.length);
      expect(sha(u.seen[0]!.body)).toBe(sha(body));
      expect(u.seen[0]!.headers['content-length']).toBe(String(body.length));
    }
  });

  it('answers 413 before any copy leaves, with Content-Length', async () => {
    const ups = await upstreams(2);
    const proxy = redundantProxy({ upstreams: ups.map((u) => u.url), maxBodySize: 1000 });
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    const res = await rawRequest(gw.url, `POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5000\r\nContent-Type: text/plain\r\n\r\n`, 'a'.repeat(5000));
    expect(res.status).toBe(413);
    expect(JSON.parse(res.body)).toMatchObject({ code: 'RP_ERR_BODY_TOO_LARGE' });
    expect(ups.every((u) => u.seen.length === 0)).toBe(true);
  });

  it('answers 413 before any copy leaves, with a chunked body and no Content-Length', async () => {
    const ups = await upstreams(2);
    const proxy = redundantProxy({ upstreams: ups.map((u) => u.url), maxBodySize: 1000 });
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    const chunk = 'b'.repeat(600);
    const chunked = `${(600).toString(16)}\r\n${chunk}\r\n${(600).toString(16)}\r\n${chunk}\r\n0\r\n\r\n`;
    const res = await rawRequest(gw.url, `POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n`, chunked);
    expect(res.status).toBe(413);
    expect(JSON.parse(res.body)).toMatchObject({ code: 'RP_ERR_BODY_TOO_LARGE' });
    expect(ups.every((u) => u.seen.length === 0)).toBe(true);
  });

  it('a body exactly maxBodySize long is accepted', async () => {
    const ups = await upstreams(1);
    const proxy = redundantProxy({ upstreams: ups.map((u) => u.url), maxBodySize: 1000 });
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    const res = await client.send(`${gw.url}/x`, { method: 'POST', body: 'c'.repeat(1000) });
    expect(res.status).toBe(200);
    expect(ups[0]!.seen[0]!.body.length).toBe(1000);
  });
});

describe('bodies consumed by a parser before the proxy', () => {
  async function expressGateway(mw: express.RequestHandler[], proxyUpstreams: string[]) {
    const proxy = redundantProxy({ upstreams: proxyUpstreams });
    const app = express();
    app.use(...mw, proxy);
    const server = http.createServer(app);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const gw = {
      url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
      close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
    };
    open.push(gw, proxy);
    return gw;
  }

  it('express.json() without a raw body gives a clear 500 code instead of forwarding an empty body', async () => {
    const ups = await upstreams(1);
    const gw = await expressGateway([express.json()], ups.map((u) => u.url));
    const res = await client.send(`${gw.url}/x`, { method: 'POST', body: '{"a":1}', headers: { 'content-type': 'application/json' } });
    expect(res.status).toBe(500);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_BODY_CONSUMED' });
    expect(ups[0]!.seen).toHaveLength(0);
  });

  it('forwards a header a middleware set to a number, as its string', async () => {
    const ups = await upstreams(1);
    const setsNumber = (req: express.Request, _res: express.Response, next: express.NextFunction) => {
      (req.headers as Record<string, unknown>)['x-attempt'] = 3;
      next();
    };
    const gw = await expressGateway([setsNumber], ups.map((u) => u.url));
    const res = await client.send(`${gw.url}/x`);
    expect(res.status).toBe(200);
    expect(ups[0]!.seen[0]!.headers['x-attempt']).toBe('3');
  });

  it('uses the raw body a parser kept (express.json verify → req.rawBody)', async () => {
    const ups = await upstreams(1);
    const keepRaw = express.json({ verify: (req, _res, buf) => ((req as unknown as { rawBody: Buffer }).rawBody = Buffer.from(buf)) });
    const gw = await expressGateway([keepRaw], ups.map((u) => u.url));
    const res = await client.send(`${gw.url}/x`, { method: 'POST', body: '{"a":1}', headers: { 'content-type': 'application/json' } });
    expect(res.status).toBe(200);
    expect(ups[0]!.seen[0]!.body.toString()).toBe('{"a":1}');
  });

  it('a parser that kept a gzip body decompressed: the copies carry those bytes without content-encoding', async () => {
    const ups = await upstreams(1);
    const keepRaw = express.json({ verify: (req, _res, buf) => ((req as unknown as { rawBody: Buffer }).rawBody = Buffer.from(buf)) });
    const gw = await expressGateway([keepRaw], ups.map((u) => u.url));
    const res = await client.send(`${gw.url}/x`, { method: 'POST', body: gzipSync('{"a":1}'), headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' } });
    expect(res.status).toBe(200);
    const seen = ups[0]!.seen[0]!;
    expect(seen.body.toString()).toBe('{"a":1}');
    expect(seen.headers['content-encoding']).toBeUndefined();
    expect(seen.headers['content-length']).toBe('7');
  });

  it('bytes kept as they were sent (still compressed, as for a webhook signature) keep their Content-Encoding, with a length or chunked', async () => {
    const ups = await upstreams(1);
    const gw = await expressGateway([keepsRawBody((bytes) => bytes)], ups.map((u) => u.url));
    const cases = [
      ['gzip', gzipSync('{"event":"paid"}'), true],
      ['deflate', deflateSync('{"event":"paid"}'), true],
      ['br', brotliCompressSync('{"event":"paid"}'), true],
      ['gzip', gzipSync('{"event":"paid"}'), false],
      ['deflate', deflateSync('{"event":"paid"}'), false],
    ] as const;
    for (const [i, [coding, sent, withLength]] of cases.entries()) {
      const head = `POST /x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: ${coding}\r\nConnection: close\r\n`;
      const res = withLength ? await rawRequest(gw.url, `${head}Content-Length: ${sent.length}\r\n\r\n`, sent) : await rawRequest(gw.url, `${head}Transfer-Encoding: chunked\r\n\r\n`, oneChunk(sent));
      expect([coding, withLength, res.status]).toEqual([coding, withLength, 200]);
      const seen = ups[0]!.seen[i]!;
      expect(seen.body.equals(sent)).toBe(true);
      expect(seen.headers['content-encoding']).toBe(coding);
    }
  });

  it('text a parser kept without a length to check it by is refused when it holds U+FFFD, the mark of a decoding that lost bytes', async () => {
    const ups = await upstreams(1);
    const gw = await expressGateway([express.text({ type: 'text/plain' })], ups.map((u) => u.url));
    const chunked = (body: Buffer) => rawRequest(gw.url, 'POST /x HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain; charset=utf-8\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n', oneChunk(body));
    const lossy = await chunked(Buffer.from([0x63, 0x61, 0x66, 0xe9])); // latin1 sent as UTF-8
    expect([lossy.status, JSON.parse(lossy.body).code]).toEqual([500, 'RP_ERR_BODY_CONSUMED']);
    const fine = await chunked(Buffer.from('café'));
    expect(fine.status).toBe(200);
    expect(ups[0]!.seen.map((x) => x.body.toString())).toEqual(['café']);
  });

  it('text a parser kept is sent as the bytes received, in its charset (express.text, latin1)', async () => {
    const ups = await upstreams(1);
    const gw = await expressGateway([express.text({ type: 'text/plain' })], ups.map((u) => u.url));
    const bytes = Buffer.from([0x63, 0x61, 0x66, 0xe9]); // "café" in latin1
    const res = await client.send(`${gw.url}/x`, { method: 'POST', body: bytes, headers: { 'content-type': 'text/plain; charset=iso-8859-1' } });
    expect(res.status).toBe(200);
    expect(ups[0]!.seen[0]!.body).toEqual(bytes);
  });

  it('text a parser decoded with loss (latin1 read as UTF-8), or a parsed JSON string, is refused with 500 RP_ERR_BODY_CONSUMED, never forwarded changed', async () => {
    const ups = await upstreams(1);
    // What koa-bodyparser does with a form: the bytes decoded as UTF-8, kept as a string.
    const lossy = await expressGateway([keepsRawBody((bytes) => bytes.toString('utf8'))], ups.map((u) => u.url));
    const res = await client.send(`${lossy.url}/x`, { method: 'POST', body: Buffer.from([0x63, 0x61, 0x66, 0xe9]), headers: { 'content-type': 'application/x-www-form-urlencoded; charset=iso-8859-1' } });
    expect(res.status).toBe(500);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_BODY_CONSUMED', message: expect.stringContaining('charset iso-8859-1') });
    const same = await client.send(`${lossy.url}/x`, { method: 'POST', body: Buffer.from([0x63, 0x61, 0x66, 0xe9]), headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    expect(same.status).toBe(500);
    expect(same.json()).toMatchObject({ code: 'RP_ERR_BODY_CONSUMED', message: expect.stringContaining('not the 4 received') });
    // express.json({ strict: false }) parses a JSON string into req.body: a value, not the body.
    const json = await expressGateway([express.json({ strict: false })], ups.map((u) => u.url));
    const parsed = await client.send(`${json.url}/x`, { method: 'POST', body: '"hello"', headers: { 'content-type': 'application/json' } });
    expect(parsed.status).toBe(500);
    expect(parsed.json()).toMatchObject({ code: 'RP_ERR_BODY_CONSUMED' });
    // Chunked, with no length to compare: a JSON request's string is still a value.
    const chunked = await rawRequest(json.url, 'POST /x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7\r\n"hello"\r\n0\r\n\r\n');
    expect([chunked.status, JSON.parse(chunked.body).code]).toEqual([500, 'RP_ERR_BODY_CONSUMED']);
    expect(ups[0]!.seen).toHaveLength(0);
  });

  it('uses the Buffer express.raw() leaves in req.body', async () => {
    const ups = await upstreams(1);
    const gw = await expressGateway([express.raw({ type: '*/*' })], ups.map((u) => u.url));
    const res = await client.send(`${gw.url}/x`, { method: 'PUT', body: 'raw bytes', headers: { 'content-type': 'text/plain' } });
    expect(res.status).toBe(200);
    expect(ups[0]!.seen[0]!.body.toString()).toBe('raw bytes');
  });
});

describe.each(frameworks)('headers (%s)', (kind) => {
  it('never passes hop-by-hop or spoofed x-redundant-* headers, in either direction', async () => {
    const ups = await upstreams(2, (_req, res) => {
      res.writeHead(200, {
        'content-type': 'text/plain',
        connection: 'x-upstream-private',
        'x-upstream-private': 'secret',
        'keep-alive': 'timeout=5',
        'x-redundant-commit': 'won',
        'proxy-authenticate': 'Basic',
        'x-kept': 'yes',
      });
      res.end('ok');
    });
    const res = await rawGet(kind, ups, [
      'Connection: close, X-Client-Private',
      'X-Client-Private: nope',
      'Keep-Alive: timeout=9',
      'TE: trailers',
      'Upgrade: websocket',
      'Proxy-Authorization: Basic abc',
      'X-Redundant-Request-Id: forged',
      'X-Redundant-Commit: won',
      'X-Request-Id: client-chosen',
      'X-End-To-End: kept',
    ]);
    expect(res.status).toBe(200);
    for (const u of ups) {
      const h = u.seen[0]!.headers;
      expect(h['x-client-private']).toBeUndefined();
      expect(h['keep-alive']).toBeUndefined();
      expect(h.te).toBeUndefined();
      expect(h.upgrade).toBeUndefined();
      expect(h['proxy-authorization']).toBeUndefined();
      expect(h['x-redundant-commit']).toBeUndefined();
      expect(h['x-redundant-request-id']).not.toBe('forged');
      expect(h['x-request-id']).not.toBe('client-chosen');
      expect(h['x-request-id']).toBe(h['x-redundant-request-id']);
      expect(h['x-end-to-end']).toBe('kept');
      // The upstream gets its own Host, and learns the client's through X-Forwarded-*.
      expect(h.host).toBe(`127.0.0.1:${u.port}`);
      expect(h['x-forwarded-host']).toBe('gateway.example');
      expect(h['x-forwarded-proto']).toBe('http');
      expect(h['x-forwarded-for']).toMatch(/127\.0\.0\.1/);
    }
    expect(res.headers['x-upstream-private']).toBeUndefined();
    expect(res.headers['proxy-authenticate']).toBeUndefined();
    expect(res.headers['x-redundant-commit']).toBeUndefined();
    expect(res.headers['keep-alive']).toBeUndefined();
    expect(res.headers['x-kept']).toBe('yes');
    expect(res.headers['x-redundant-served-by']).toBeDefined();
  });

  it('drops X-Forwarded-* headers that Connection names, and sets its own; repeated lines pass joined', async () => {
    const ups = await upstreams(1);
    const res = await rawGet(kind, ups, [
      'Connection: keep-alive, X-Forwarded-Proto, X-Forwarded-Host',
      'X-Forwarded-Proto: https',
      'X-Forwarded-Host: spoofed.example',
      'Accept: text/plain',
      'Accept: application/json',
      'Connection: close',
    ]);
    expect(res.status).toBe(200);
    const h = ups[0]!.seen[0]!.headers;
    expect(h['x-forwarded-proto']).toBe('http');
    expect(h['x-forwarded-host']).toBe('gateway.example');
    expect(h.accept).toBe('text/plain, application/json');
    expect(h.connection).not.toMatch(/forwarded/i);
  });

  it('with trustForwarded, appends to an existing X-Forwarded-For chain and keeps the balancer\'s -Proto and -Host', async () => {
    const ups = await upstreams(1);
    const proxy = redundantProxy({ upstreams: ups.map((u) => u.url), trustForwarded: true });
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    await client.send(`${gw.url}/`, { headers: { 'x-forwarded-for': '203.0.113.9', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'shop.example' } });
    const h = ups[0]!.seen[0]!.headers;
    expect(h['x-forwarded-for']).toMatch(/^203\.0\.113\.9, .*127\.0\.0\.1$/);
    expect(h['x-forwarded-proto']).toBe('https');
    expect(h['x-forwarded-host']).toBe('shop.example');
  });

  it("by default, a client's own X-Forwarded-* and Forwarded are replaced by what the gateway sees", async () => {
    const ups = await upstreams(1);
    const proxy = redundantProxy({ upstreams: ups.map((u) => u.url) });
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    await client.send(`${gw.url}/`, { headers: { 'x-forwarded-for': '203.0.113.9', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil.example', forwarded: 'for=203.0.113.9;proto=https' } });
    const h = ups[0]!.seen[0]!.headers;
    expect(h['x-forwarded-for']).toMatch(/^(::ffff:)?127\.0\.0\.1$/);
    expect(h['x-forwarded-proto']).toBe('http');
    expect(h['x-forwarded-host']).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(h.forwarded).toBeUndefined();
  });

  it('tells clients an upstream given only as a URL by its place in the list, never its address', async () => {
    const ups = await upstreams(2);
    const proxy = redundantProxy({ upstreams: [ups[0]!.url, { id: 'named', url: ups[1]!.url }], copies: 1 });
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) seen.add(String((await client.send(`${gw.url}/`)).headers['x-redundant-served-by']));
    expect([...seen].sort()).toEqual(['named', 'upstream-1']);
  });
});

describe('upstream URL with a path prefix', () => {
  it('prepends the prefix to the request path', async () => {
    const ups = await upstreams(1);
    const proxy = redundantProxy({ upstreams: [`${ups[0]!.url}/api/v1/`] });
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    await client.send(`${gw.url}/users?id=3`);
    expect(ups[0]!.seen[0]!.url).toBe('/api/v1/users?id=3');
  });
});
