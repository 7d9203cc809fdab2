import http, { type IncomingMessage } from 'node:http';
import net, { type AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { afterAll, afterEach, describe, expect, it } from '@jest/globals';
import WebSocket, { WebSocketServer } from 'ws';
import { tunnel, type UpgradeOptions, type UpgradeOutcome } from '../../lib/proxy/upgrade.js';
import { VirtualTime } from '../helpers/virtual-time.js';

// The upgrade tunnel on real sockets: a `ws` server upstream, a node:http
// gateway whose `upgrade` event hands the socket to `tunnel()`, a `ws` client.

const closers: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});
afterAll(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

function listen(server: http.Server | net.Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

function closeServer(server: http.Server | net.Server): Promise<void> {
  (server as http.Server).closeAllConnections?.();
  return new Promise((resolve) => server.close(() => resolve()));
}

/** A WebSocket upstream that echoes, and keeps the handshake requests it saw. */
async function echoUpstream() {
  const server = http.createServer((_req, res) => res.writeHead(426).end());
  const wss = new WebSocketServer({ noServer: true });
  const seen: IncomingMessage[] = [];
  const sockets = new Set<WebSocket>();
  server.on('upgrade', (req, socket, head) => {
    seen.push(req);
    wss.handleUpgrade(req, socket, head, (ws) => {
      sockets.add(ws);
      ws.on('close', () => sockets.delete(ws));
      ws.on('message', (data, binary) => ws.send(binary ? data : `echo:${String(data)}`));
    });
  });
  const port = await listen(server);
  closers.push(async () => {
    for (const ws of sockets) ws.terminate();
    wss.close();
    await closeServer(server);
  });
  return { url: new URL(`http://127.0.0.1:${port}/base`), seen, sockets };
}

/** A gateway whose upgrades go through `tunnel()` to `target`. */
async function gateway(target: { id: string; url: URL }, extra: Partial<UpgradeOptions> = {}) {
  const outcomes: UpgradeOutcome[] = [];
  const server = http.createServer((_req, res) => res.writeHead(404).end());
  let n = 0;
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    tunnel(req, socket, head, target, { requestId: `rid-${++n}`, trustForwarded: false, timeout: 5000, onDone: (o) => outcomes.push(o), ...extra });
  });
  const port = await listen(server);
  closers.push(() => closeServer(server));
  return { url: `ws://127.0.0.1:${port}`, port, outcomes };
}

function open(url: string, headers: Record<string, string> = {}): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    closers.push(() => ws.terminate());
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`status ${res.statusCode}`), { status: res.statusCode })));
  });
}

function next(ws: WebSocket): Promise<string> {
  return new Promise((resolve) => ws.once('message', (data) => resolve(String(data))));
}

/** Sends a raw upgrade request and reads what comes back until the socket closes. */
function rawUpgrade(port: number, path = '/chat'): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let out = '';
    socket.on('data', (c) => (out += c));
    socket.on('close', () => resolve(out));
    socket.on('error', reject);
    socket.write(`GET ${path} HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`);
  });
}

describe('WebSocket passthrough: tunnel()', () => {
  it('carries messages both ways through the upstream, with the path prefix and the forwarding headers of a copy', async () => {
    const up = await echoUpstream();
    const gw = await gateway({ id: 'a', url: up.url });
    const ws = await open(`${gw.url}/chat?room=1`, { 'x-redundant-request-id': 'forged', 'x-custom': 'kept' });
    ws.send('hello');
    expect(await next(ws)).toBe('echo:hello');
    ws.send(Buffer.from([1, 2, 3]), { binary: true });
    expect([...Buffer.from(await new Promise<Buffer>((r) => ws.once('message', (d) => r(d as Buffer))))]).toEqual([1, 2, 3]);

    const req = up.seen[0]!;
    expect(req.url).toBe('/base/chat?room=1');
    expect(req.headers['x-custom']).toBe('kept');
    expect(req.headers['x-redundant-request-id']).toBeUndefined();
    expect(req.headers['x-request-id']).toBe('rid-1');
    expect(req.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(req.headers.upgrade).toBe('websocket');
    expect(req.headers.connection).toMatch(/upgrade/i);
    expect(gw.outcomes).toEqual([{ kind: 'upgraded', upstreamId: 'a' }]);
  });

  it('tells the client which upstream and request id it got, in the 101 answer', async () => {
    const up = await echoUpstream();
    const gw = await gateway({ id: 'a', url: up.url });
    const head = await new Promise<IncomingMessage>((resolve, reject) => {
      const ws = new WebSocket(`${gw.url}/x`);
      closers.push(() => ws.terminate());
      ws.once('upgrade', resolve);
      ws.once('error', reject);
    });
    expect(head.statusCode).toBe(101);
    expect(head.headers['x-redundant-served-by']).toBe('a');
    expect(head.headers['x-request-id']).toBe('rid-1');
  });

  it('closes the upstream connection when the client closes, and the client when the upstream closes', async () => {
    const up = await echoUpstream();
    const gw = await gateway({ id: 'a', url: up.url });
    const first = await open(`${gw.url}/one`);
    first.send('x');
    await next(first);
    expect(up.sockets.size).toBe(1);
    const upstreamClosed = new Promise<void>((resolve) => [...up.sockets][0]!.once('close', () => resolve()));
    first.close();
    await upstreamClosed;

    const second = await open(`${gw.url}/two`);
    second.send('y');
    await next(second);
    const clientClosed = new Promise<void>((resolve) => second.once('close', () => resolve()));
    [...up.sockets][0]!.terminate();
    await clientClosed;
  });

  it('passes an upstream that refuses the upgrade through as it answered, then closes', async () => {
    const server = http.createServer();
    server.on('upgrade', (_req, socket: Duplex) => socket.end('HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain\r\ncontent-length: 4\r\nx-redundant-worker: 1\r\n\r\nnope'));
    const port = await listen(server);
    closers.push(() => closeServer(server));
    const gw = await gateway({ id: 'a', url: new URL(`http://127.0.0.1:${port}`) });
    const answer = await rawUpgrade(gw.port);
    expect(answer).toMatch(/^HTTP\/1\.1 401 Unauthorized\r\n/);
    expect(answer).toMatch(/\r\nconnection: close\r\n/i);
    expect(answer).toMatch(/\r\nx-redundant-served-by: a\r\n/);
    expect(answer).not.toMatch(/x-redundant-worker/);
    expect(answer.endsWith('\r\n\r\nnope')).toBe(true);
    expect(gw.outcomes).toEqual([{ kind: 'refused', upstreamId: 'a', status: 401 }]);
  });

  it('answers 502 with a JSON code when the upstream cannot be reached', async () => {
    const dead = net.createServer();
    const port = await listen(dead);
    await closeServer(dead);
    const gw = await gateway({ id: 'a', url: new URL(`http://127.0.0.1:${port}`) });
    const answer = await rawUpgrade(gw.port);
    expect(answer).toMatch(/^HTTP\/1\.1 502 Bad Gateway\r\n/);
    const body = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4));
    expect(body).toMatchObject({ code: 'RP_ERR_UPSTREAMS_FAILED', requestId: 'rid-1' });
    expect(body.message).toMatch(/upstream a/);
    expect(gw.outcomes[0]).toMatchObject({ kind: 'failed', upstreamId: 'a' });
  });

  it('answers 504 with a JSON code when the upstream does not answer the handshake in time, and drops its connection', async () => {
    const silent = net.createServer();
    const held: net.Socket[] = [];
    const upstreamClosed = new Promise<void>((resolve) =>
      silent.on('connection', (s) => {
        held.push(s);
        s.resume();
        s.on('close', () => resolve());
      }),
    );
    const port = await listen(silent);
    closers.push(() => {
      for (const s of held) s.destroy();
      return closeServer(silent);
    });
    const time = new VirtualTime();
    const gw = await gateway({ id: 'a', url: new URL(`http://127.0.0.1:${port}`) }, { timeout: 2000, scheduler: time });
    const answer = rawUpgrade(gw.port);
    while (held.length === 0) await new Promise((r) => setTimeout(r, 5));
    await time.advance(1999);
    expect(gw.outcomes).toEqual([]);
    await time.advance(1);
    const text = await answer;
    expect(text).toMatch(/^HTTP\/1\.1 504 Gateway Timeout\r\n/);
    expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))).toMatchObject({ code: 'RP_ERR_TIMEOUT' });
    await upstreamClosed;
  });

  it('keeps what the client sent right after its handshake for the upstream, after the switch', async () => {
    // A raw upgrade upstream: switches, then echoes every byte.
    const server = http.createServer();
    const heads: string[] = [];
    server.on('upgrade', (_req, socket: Duplex, head: Buffer) => {
      heads.push(head.toString());
      socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n');
      if (head.length) socket.write(head);
      socket.pipe(socket);
    });
    const port = await listen(server);
    closers.push(() => closeServer(server));
    const gw = await gateway({ id: 'a', url: new URL(`http://127.0.0.1:${port}`) });
    const client = net.connect(gw.port, '127.0.0.1');
    closers.push(() => void client.destroy());
    let got = '';
    client.on('data', (c) => (got += c));
    client.write('GET / HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nEARLY');
    while (!got.includes('EARLY')) await new Promise((r) => setTimeout(r, 5));
    expect(got).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
    expect(got.slice(got.indexOf('\r\n\r\n') + 4)).toBe('EARLY');
    // Held until the upstream switched, never sent as the handshake's body.
    expect(heads).toEqual(['']);
    client.write('LATER');
    while (!got.endsWith('LATER')) await new Promise((r) => setTimeout(r, 5));
  });

  it('drops the upstream handshake when the client leaves before it is answered', async () => {
    const silent = net.createServer();
    const accepted: net.Socket[] = [];
    const upstreamClosed = new Promise<void>((resolve) =>
      silent.on('connection', (s) => {
        accepted.push(s);
        s.resume();
        s.on('close', () => resolve());
      }),
    );
    let connected = false;
    silent.on('connection', () => (connected = true));
    const port = await listen(silent);
    closers.push(() => {
      for (const s of accepted) s.destroy();
      return closeServer(silent);
    });
    // Only the client's leaving can end the upstream connection within the test's time.
    const gw = await gateway({ id: 'a', url: new URL(`http://127.0.0.1:${port}`) }, { timeout: 600_000 });
    const client = net.connect(gw.port, '127.0.0.1');
    client.on('error', () => undefined);
    closers.push(() => void client.destroy());
    client.write('GET / HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    while (!connected) await new Promise((r) => setTimeout(r, 5));
    client.destroy();
    await upstreamClosed;
  });
});
