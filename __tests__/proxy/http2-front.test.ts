import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { afterAll, describe, expect, it } from '@jest/globals';
import { redundantProxy } from '../../lib/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { after, startUpstream } from '../helpers/upstream.js';

// A gateway served over HTTP/2 (node:http2's compatibility API, h2c here):
// the client's pseudo-headers are the hop's own and never reach an upstream
// (undici refused every copy that carried them, and the refusals ejected
// healthy upstreams); the client's `:authority` is its host; an error that
// closes an HTTP/1.1 connection closes only the stream.

const open = closeAfterEach();
const sessions: http2.ClientHttp2Session[] = [];
afterAll(() => sessions.forEach((s) => s.close()));

async function h2Gateway(handler: (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void) {
  const server = http2.createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  open.push({ close: () => new Promise<void>((r) => server.close(() => r())) });
  const client = http2.connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  sessions.push(client);
  open.push({ close: () => new Promise<void>((r) => client.close(() => r())) });
  return (headers: http2.OutgoingHttpHeaders, body?: string) =>
    new Promise<{ status: number; headers: http2.IncomingHttpHeaders; text: string }>((resolve, reject) => {
      const stream = client.request(headers);
      let head: http2.IncomingHttpHeaders = {};
      let text = '';
      stream.on('response', (h) => (head = h));
      stream.setEncoding('utf8');
      stream.on('data', (d: string) => (text += d));
      stream.on('end', () => resolve({ status: Number(head[':status']), headers: head, text }));
      stream.on('error', reject);
      stream.end(body);
    });
}

describe('a gateway served over HTTP/2', () => {
  it('sends copies without pseudo-headers, with the client’s :authority as x-forwarded-host, and ejects nobody', async () => {
    const ups = [await startUpstream(after(0)), await startUpstream(after(0))];
    open.push(...ups);
    const proxy = redundantProxy({ upstreams: ups.map((u) => u.url), ejection: { consecutiveFailures: 1 } });
    open.push(proxy);
    const failures: unknown[] = [];
    proxy.on('race:end', (r) => failures.push(...r.copies.filter((c) => c.error != null).map((c) => c.error)));
    const send = await h2Gateway((req, res) => void proxy.handler(req as never, res as never));
    for (let i = 0; i < 4; i++) {
      const res = await send({ ':method': 'GET', ':path': `/h2/${i}?x=1`, ':authority': 'shop.example' });
      expect(res.status).toBe(200);
      expect(JSON.parse(res.text)).toEqual({ ok: true });
    }
    expect(failures).toEqual([]);
    expect(Object.values(proxy.metrics().upstreams).some((u) => u.ejected)).toBe(false);
    const seen = ups.flatMap((u) => u.seen);
    expect(seen.length).toBeGreaterThanOrEqual(4);
    for (const s of seen) {
      expect(Object.keys(s.headers).filter((name) => name.startsWith(':'))).toEqual([]);
      expect(s.headers['x-forwarded-host']).toBe('shop.example');
    }
    expect(seen.map((s) => s.url)).toContain('/h2/3?x=1');
  });

  it('answers a body over maxBodySize with 413 JSON on its stream, and the next request on the connection is served', async () => {
    const up = await startUpstream(after(0));
    open.push(up);
    const proxy = redundantProxy({ upstreams: [up.url], maxBodySize: 10 });
    open.push(proxy);
    // node:http2 drops a `connection` header with a warning: none is set (what the proxy writes is looked at).
    const written: string[] = [];
    const send = await h2Gateway((req, res) => {
      const writeHead = res.writeHead.bind(res) as (status: number, headers?: Record<string, string>) => typeof res;
      res.writeHead = ((status: number, headers?: Record<string, string>) => {
        written.push(...Object.keys(headers ?? {}).map((n) => n.toLowerCase()), ...res.getHeaderNames());
        return writeHead(status, headers);
      }) as typeof res.writeHead;
      proxy.handler(req as never, res as never);
    });
    const big = await send({ ':method': 'POST', ':path': '/p', 'content-length': '100' }, 'x'.repeat(100));
    expect(big.status).toBe(413);
    expect(JSON.parse(big.text)).toMatchObject({ code: 'RP_ERR_BODY_TOO_LARGE' });
    expect(written).toContain('content-type');
    expect(written).not.toContain('connection');
    const small = await send({ ':method': 'POST', ':path': '/p', 'content-length': '5' }, 'small');
    expect(small.status).toBe(200);
    expect(up.seen).toHaveLength(1);
  });
});
