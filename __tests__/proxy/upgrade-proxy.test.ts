import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { afterAll, describe, expect, it } from '@jest/globals';
import express from 'express';
import WebSocket, { WebSocketServer } from 'ws';
import { redundantProxy, type ProxyOptions, type RedundantProxy, type UpgradeEndEvent, type UpgradeEvent } from '../../lib/index.js';
import { withScheduler } from '../../lib/time.js';
import { testClient } from '../helpers/client.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { frameworks, mountGateway, type Framework } from '../helpers/gateway.js';
import { eventually } from '../helpers/replica.js';
import { deadPort, listen as listenPlain, rawRequest } from '../helpers/upstream.js';
import { VirtualTime } from '../helpers/virtual-time.js';

// WebSocket passthrough wired into the proxy: `proxy.attach(server)` on the
// node:http server under Koa, Express and `proxy.handler`, a real `ws` client,
// real `ws` upstreams.

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

/** An upstream that echoes WebSocket messages with its name, and answers plain requests with `status`. */
async function wsUpstream(name: string, status = 200, switchHeaders: string[] = []) {
  const server = http.createServer((_req, res: ServerResponse) => res.writeHead(status, { 'content-type': 'text/plain' }).end(name));
  const wss = new WebSocketServer({ noServer: true });
  wss.on('headers', (headers) => headers.push(...switchHeaders));
  const seen: IncomingMessage[] = [];
  const sockets = new Set<WebSocket>();
  server.on('upgrade', (req, socket, head) => {
    seen.push(req);
    wss.handleUpgrade(req, socket, head, (ws) => {
      sockets.add(ws);
      ws.on('close', () => sockets.delete(ws));
      ws.on('message', (data) => ws.send(`${name}:${String(data)}`));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  open.push({
    close: async () => {
      for (const ws of sockets) ws.terminate();
      wss.close();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  });
  return { url, seen, sockets };
}

/** A gateway of `kind` with the proxy attached to its server's upgrades. */
async function gateway(kind: Framework, upstreams: Array<{ id: string; url: string }>, options: Partial<ProxyOptions> = {}) {
  const proxy = redundantProxy({ upstreams, ...options });
  const gw = await mountGateway(kind, proxy);
  proxy.attach(gw.server);
  open.push(gw, proxy);
  const upgrades: UpgradeEvent[] = [];
  const ends: UpgradeEndEvent[] = [];
  proxy.on('upgrade', (e) => upgrades.push(e));
  proxy.on('upgrade:end', (e) => ends.push(e));
  return { proxy, gw, ws: gw.url.replace(/^http/, 'ws'), port: Number(new URL(gw.url).port), upgrades, ends };
}

function connect(url: string, headers: Record<string, string> = {}): Promise<{ ws: WebSocket; head: IncomingMessage }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    open.push({ close: async () => void ws.terminate() });
    let head: IncomingMessage;
    ws.once('upgrade', (res) => (head = res));
    ws.once('open', () => resolve({ ws, head }));
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`status ${res.statusCode}`), { status: res.statusCode })));
  });
}

function next(ws: WebSocket): Promise<string> {
  return new Promise((resolve) => ws.once('message', (data) => resolve(String(data))));
}

/** A raw upgrade request; what comes back until the socket closes, head and JSON body. */
function rawUpgrade(port: number): Promise<{ head: string; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let out = '';
    socket.on('data', (c) => (out += c));
    socket.on('close', () => {
      const at = out.indexOf('\r\n\r\n');
      resolve({ head: out.slice(0, at), body: JSON.parse(out.slice(at + 4)) as Record<string, unknown> });
    });
    socket.on('error', reject);
    socket.write('GET /chat HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
  });
}

describe.each(frameworks)('WebSocket passthrough (%s)', (kind) => {
  it('tunnels to one upstream with a fresh request id and without the client\'s x-redundant-* headers; an event and metrics for it', async () => {
    const a = await wsUpstream('a');
    const { proxy, ws: url, upgrades, ends } = await gateway(kind, [{ id: 'a', url: `${a.url}/base` }]);
    const { ws, head } = await connect(`${url}/chat?room=1`, { 'x-redundant-request-id': 'forged', 'x-request-id': 'mine', 'x-custom': 'kept' });
    ws.send('hello');
    expect(await next(ws)).toBe('a:hello');

    expect(head.headers['x-redundant-served-by']).toBe('a');
    const requestId = head.headers['x-request-id'];
    expect(requestId).toMatch(/^[0-9a-f-]{36}$/);
    const seen = a.seen[0]!;
    expect(seen.url).toBe('/base/chat?room=1');
    expect(seen.headers['x-request-id']).toBe(requestId);
    expect(seen.headers['x-custom']).toBe('kept');
    expect(Object.keys(seen.headers).filter((h) => h.startsWith('x-redundant-'))).toEqual([]);
    expect(upgrades).toEqual([{ requestId, path: '/chat?room=1', upstream: 'a', outcome: 'upgraded', status: 101 }]);
    expect(proxy.metrics().upgrades).toEqual({ upgraded: 1, refused: 0, failed: 0, open: 1 });

    ws.close();
    const end = await eventually(() => ends[0]);
    expect(end).toMatchObject({ requestId, upstream: 'a' });
    expect(proxy.metrics().upgrades.open).toBe(0);
  });

  it('the 101 carries the proxy’s request id only, and none of the upstream’s x-redundant-* headers', async () => {
    const a = await wsUpstream('a', 200, ['X-Request-Id: upstream-chosen', 'X-Redundant-Worker: 1', 'X-Own: kept']);
    const { ws: url } = await gateway(kind, [{ id: 'a', url: a.url }]);
    const { ws, head } = await connect(`${url}/chat`);
    expect(head.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(head.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase()).filter((n) => n === 'x-request-id')).toHaveLength(1);
    expect(head.headers['x-redundant-worker']).toBeUndefined();
    expect(head.headers['x-own']).toBe('kept');
    ws.close();
  });

  it('takes turns among the upstreams as reads do, and skips an ejected one', async () => {
    const a = await wsUpstream('a', 500);
    const b = await wsUpstream('b');
    const { gw, ws: url } = await gateway(kind, [{ id: 'a', url: a.url }, { id: 'b', url: b.url }], { ejection: { consecutiveFailures: 1 } });
    const first = await connect(`${url}/x`);
    const second = await connect(`${url}/x`);
    expect([first.head.headers['x-redundant-served-by'], second.head.headers['x-redundant-served-by']].sort()).toEqual(['a', 'b']);
    // a fails a read's copy: ejected.
    expect((await client.send(`${gw.url}/read`)).text).toBe('b');
    await eventually(() => a.seen.length === 1 && b.seen.length === 1);
    for (let i = 0; i < 3; i++) expect((await connect(`${url}/x`)).head.headers['x-redundant-served-by']).toBe('b');
    expect([a.seen.length, b.seen.length]).toEqual([1, 4]);
  });

  it('answers 502 with a JSON code when the upstream is down', async () => {
    const { port, upgrades, proxy } = await gateway(kind, [{ id: 'a', url: `http://127.0.0.1:${await deadPort()}` }]);
    const { head, body } = await rawUpgrade(port);
    expect(head).toMatch(/^HTTP\/1\.1 502 Bad Gateway\r\n/);
    expect(body).toMatchObject({ code: 'RP_ERR_UPSTREAMS_FAILED' });
    expect(upgrades[0]).toMatchObject({ upstream: 'a', outcome: 'failed', status: 502, requestId: body.requestId });
    expect(proxy.metrics().upgrades).toEqual({ upgraded: 0, refused: 0, failed: 1, open: 0 });
  });

  it('close() ends the open tunnels, and a closing proxy refuses new upgrades with 503 RP_ERR_CLOSED', async () => {
    const a = await wsUpstream('a');
    const { proxy, port, ws: url, upgrades } = await gateway(kind, [{ id: 'a', url: a.url }]);
    const { ws } = await connect(`${url}/x`);
    ws.send('1');
    await next(ws);
    const clientClosed = new Promise<void>((r) => ws.once('close', () => r()));
    await proxy.close();
    await clientClosed;
    await eventually(() => a.sockets.size === 0);
    const { head, body } = await rawUpgrade(port);
    expect(head).toMatch(/^HTTP\/1\.1 503 Service Unavailable\r\n/);
    expect(body).toMatchObject({ code: 'RP_ERR_CLOSED' });
    expect(upgrades).toHaveLength(1); // listeners are gone once closed
  });
});

describe('WebSocket passthrough, closing', () => {
  it('tunnelGrace: close() lets the tunnels go on for that long, then ends them', async () => {
    const a = await wsUpstream('a');
    const vt = new VirtualTime();
    const { proxy, ws: url } = await gateway('node', [{ id: 'a', url: a.url }], withScheduler({ tunnelGrace: 5000 }, vt));
    const { ws } = await connect(`${url}/x`);
    let closed = false;
    const closing = proxy.close().then(() => (closed = true));
    await vt.advance(4999);
    ws.send('still');
    expect(await next(ws)).toBe('a:still');
    expect(closed).toBe(false);
    const clientClosed = new Promise<void>((r) => ws.once('close', () => r()));
    await vt.advance(1);
    await closing;
    // The client sees its tunnel end (a hang here fails the test by its timeout).
    await clientClosed;
    expect(ws.readyState).toBe(WebSocket.CLOSED);
  });

  it('close() does not wait out tunnelGrace once every tunnel ended', async () => {
    const a = await wsUpstream('a');
    const vt = new VirtualTime();
    const { proxy, ws: url } = await gateway('node', [{ id: 'a', url: a.url }], withScheduler({ tunnelGrace: 600_000 }, vt));
    const { ws } = await connect(`${url}/x`);
    const closing = proxy.close();
    ws.close();
    await closing;
  });

  it('attach() returns a disposable that stops listening', async () => {
    const proxy = redundantProxy({ upstreams: ['http://127.0.0.1:1'] });
    open.push(proxy);
    const server = http.createServer();
    const attached = proxy.attach(server);
    expect(server.listeners('upgrade')).toEqual([proxy.upgrade]);
    attached.dispose();
    expect(server.listenerCount('upgrade')).toBe(0);
  });

  it('refuses a target that is not a path with 400 RP_ERR_BAD_TARGET', async () => {
    const a = await wsUpstream('a');
    const { port } = await gateway('node', [{ id: 'a', url: a.url }]);
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1');
      let out = '';
      socket.on('data', (c) => (out += c));
      socket.on('close', () => resolve(out));
      socket.on('error', reject);
      socket.write('GET /a/../b HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    });
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    expect(answer).toMatch(/RP_ERR_BAD_TARGET/);
    expect(a.seen).toHaveLength(0);
  });
});

describe('a WebSocket handshake that reaches the middleware as a plain request', () => {
  it('is answered 501 RP_ERR_UPGRADE_NOT_ATTACHED, never sent on as a plain GET', async () => {
    let asked = 0;
    const upstream = await listenPlain((_req, res) => {
      asked++;
      res.end('plain');
    });
    const proxy = redundantProxy({ upstreams: [upstream.url] });
    const gateway = await listenPlain(proxy.handler); // no proxy.attach(server)
    try {
      const res = await rawRequest(gateway.url, 'GET /chat HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
      expect(res.status).toBe(501);
      expect(JSON.parse(res.body)).toMatchObject({ code: 'RP_ERR_UPGRADE_NOT_ATTACHED' });
      expect(asked).toBe(0);
      // An h2c offer is optional for a server: served as a plain request.
      const h2c = await rawRequest(gateway.url, 'GET /x HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n');
      expect(h2c.status).toBe(200);
      expect(h2c.body).toBe('plain');
    } finally {
      await proxy.close();
      await gateway.close();
      await upstream.close();
    }
  });
});

/** An Express gateway with the proxy mounted under /api (its upstream's URL ending in /api), attached with that mountPath. */
async function mountedUnderApi() {
  const a = await wsUpstream('a');
  const proxy = redundantProxy({ upstreams: [{ id: 'a', url: `${a.url}/api` }] });
  const app = express();
  app.use('/api', proxy);
  const gw = await listenPlain(app);
  open.push(gw, proxy);
  proxy.attach(gw.server, { mountPath: '/api' });
  return { a, proxy, gw };
}

describe('attach(server, { mountPath }) under an Express mount', () => {
  it('an upgrade under the mount path goes where the mount’s requests go; one elsewhere is left to the server’s other listeners', async () => {
    const { a, proxy, gw } = await mountedUnderApi();
    // Someone else's upgrades.
    gw.server.on('upgrade', (req: IncomingMessage, socket: net.Socket) => {
      if (!/^\/api([/?]|$)/i.test(req.url!)) socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    });
    const ws = gw.url.replace(/^http/, 'ws');
    const { ws: socket } = await connect(`${ws}/api/chat?room=2`);
    socket.send('hi');
    expect(await next(socket)).toBe('a:hi');
    expect(a.seen.map((r) => r.url)).toEqual(['/api/chat?room=2']);
    // A plain request through the same mount goes to the same path.
    expect((await client.send(`${gw.url}/api/chat?room=2`)).text).toBe('a');
    await expect(connect(`${ws}/apiary`)).rejects.toMatchObject({ status: 404 });
    await expect(connect(`${ws}/elsewhere`)).rejects.toMatchObject({ status: 404 });
    expect(a.seen).toHaveLength(1);
    socket.close();
    // As Express matches a mount path: whatever its case.
    const { ws: upper } = await connect(`${ws}/API/chat`);
    upper.close();
    expect(a.seen.map((r) => r.url)).toEqual(['/api/chat?room=2', '/api/chat']);
    expect(() => proxy.attach(gw.server, { mountPath: 'api/' })).toThrow(/`mountPath` must be a path/);
  });

  it('an upgrade outside the mount path, on a server where nothing else takes upgrades, is answered 404 and closed, never left open', async () => {
    const { a, proxy, gw } = await mountedUnderApi();
    const res = await new Promise<{ head: string; body: string }>((resolve, reject) => {
      const socket = net.connect(Number(new URL(gw.url).port), '127.0.0.1');
      let out = '';
      socket.on('data', (c) => (out += c));
      socket.on('close', () => resolve({ head: out.slice(0, out.indexOf('\r\n\r\n')), body: out.slice(out.indexOf('\r\n\r\n') + 4) }));
      socket.on('error', reject);
      socket.write('GET /elsewhere HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
    });
    expect(res.head).toMatch(/^HTTP\/1.1 404/);
    expect(JSON.parse(res.body)).toMatchObject({ code: 'RP_ERR_NOT_MOUNTED' });
    expect(a.seen).toHaveLength(0);
  });
});

