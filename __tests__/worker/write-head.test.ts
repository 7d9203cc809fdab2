import http from 'node:http';
import express from 'express';
import { afterAll, describe, expect, it } from '@jest/globals';
import { MemorySessionStore, redundantProxy, redundantWorker, type SessionStore } from '../../lib/index.js';
import { testClient } from '../helpers/client.js';
import { listen, rawRequest } from '../helpers/upstream.js';

// A node:http handler that writes its answer with `res.writeHead(…)` and
// `res.end(…)` (no `setHeader`) still announces its session change in the
// answer's head: the worker holds the head until the candidate is saved.

const client = testClient();
const closers: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  for (const close of closers.reverse()) await close();
  await client.close();
});

type Handler = (req: http.IncomingMessage & { redundant?: import('../../lib/index.js').RedundantHandle }, res: http.ServerResponse) => void;

async function setup(handler: Handler, store: SessionStore = new MemorySessionStore()) {
  closers.push(() => store.close());
  const replicas = [];
  for (const id of ['a', 'b']) {
    const worker = redundantWorker({ id, store });
    const server = await listen((req, res) => worker(req, res, (err) => (err ? worker.errorHandler(err, req, res, () => res.destroy()) : handler(req as Parameters<Handler>[0], res))));
    closers.push(server.close);
    replicas.push({ id, url: server.url });
  }
  const proxy = redundantProxy({ upstreams: replicas, store });
  const gateway = await listen(proxy.handler);
  closers.push(gateway.close, () => proxy.close());
  return { url: gateway.url, store };
}

const cookieOf = (res: { headers: Record<string, string | string[] | undefined> }) => [res.headers['set-cookie']].flat().find(Boolean)?.split(';')[0];

describe('node:http handlers that use writeHead', () => {
  it('announce a session change made before writeHead: the client gets its cookie, and the next request sees the change', async () => {
    const { url } = await setup((req, res) => {
      const data = req.redundant!.session.data as { visits?: number };
      data.visits = (data.visits ?? 0) + 1;
      const body = JSON.stringify({ visits: data.visits });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
    const first = await client.send(`${url}/count`);
    expect(first.json()).toEqual({ visits: 1 });
    expect(first.headers['x-redundant-session-changed']).toBeUndefined(); // the proxy takes its own headers off
    const cookie = cookieOf(first);
    expect(cookie).toMatch(/^rp_session=/);
    const second = await client.send(`${url}/count`, { headers: { cookie: cookie! } });
    expect(second.json()).toEqual({ visits: 2 });
  });

  it('keep the status, the message and headers given both ways, as writeHead would', async () => {
    const { url } = await setup((req, res) => {
      (req.redundant!.session.data as { seen?: boolean }).seen = true;
      res.setHeader('x-set-before', 'one');
      res.writeHead(201, 'Made', [['x-raw', 'two']].flat());
      res.end('done');
    });
    const res = await client.send(`${url}/make`);
    expect(res.status).toBe(201);
    expect(res.headers['x-set-before']).toBe('one');
    expect(res.headers['x-raw']).toBe('two');
    expect(res.text).toBe('done');
    expect(cookieOf(res)).toMatch(/^rp_session=/);
  });

  it('stream as before when they write the body in parts after writeHead', async () => {
    const { url } = await setup((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('a');
      setImmediate(() => {
        res.write('b');
        res.end('c');
      });
    });
    const res = await client.send(`${url}/stream`);
    expect(res.status).toBe(200);
    expect(res.text).toBe('abc');
  });

  it('answer headers flushed early (flushHeaders) as before', async () => {
    const { url } = await setup((_req, res) => {
      res.writeHead(202, { 'content-type': 'text/plain' });
      res.flushHeaders();
      setImmediate(() => res.end('later'));
    });
    const res = await client.send(`${url}/flush`);
    expect(res.status).toBe(202);
    expect(res.text).toBe('later');
  });

  it('refuse at once, in the handler’s own call, what Node refuses at once: a header with a line break, a bad status, a chunk that is not text', async () => {
    const caught: string[] = [];
    const { url } = await setup((req, res) => {
      const next = new URL(req.url!, 'http://x').searchParams.get('next')!;
      try {
        res.writeHead(302, { location: next });
      } catch (err) {
        caught.push((err as { code: string }).code);
        try {
          res.writeHead(1000);
        } catch (e) {
          caught.push((e as { code: string }).code);
        }
        try {
          res.end(123 as unknown as string);
        } catch (e) {
          caught.push((e as { code: string }).code);
        }
        // Node's implicit head checks the status and reason set on the response, in end() itself.
        for (const [status, message] of [[1000, undefined], [400, 'Bad\r\nX-Injected: 1']] as const) {
          res.statusCode = status;
          if (message) res.statusMessage = message;
          try {
            res.end('x');
          } catch (e) {
            caught.push((e as { code: string }).code);
          }
        }
        res.statusMessage = 'Bad Request';
        res.writeHead(400, { 'content-type': 'text/plain' });
        res.end('bad redirect');
        return;
      }
      res.end();
    });
    const res = await client.send(`${url}/go?next=${encodeURIComponent('/x\r\nSet-Cookie: admin=1')}`);
    expect([res.status, res.text]).toEqual([400, 'bad redirect']);
    expect(res.headers['set-cookie']).toBeUndefined();
    expect(caught.slice(0, 5)).toEqual(['ERR_INVALID_CHAR', 'ERR_HTTP_INVALID_STATUS_CODE', 'ERR_INVALID_ARG_TYPE', 'ERR_HTTP_INVALID_STATUS_CODE', 'ERR_INVALID_CHAR']);
    // Both replicas took their copy and lived.
    expect((await client.send(`${url}/go?next=%2Fok`)).status).toBe(302);
  });

  it('once the handler ended the answer it reads as sent and ended while its session is saved; later calls go after it, as Node has them', async () => {
    const store = new MemorySessionStore();
    let saving: () => void = () => undefined;
    const saved = new Promise<void>((r) => (saving = r));
    const slowStore = new Proxy(store, {
      get(target, name) {
        if (name === 'saveCandidate') {
          return async (...args: Parameters<SessionStore['saveCandidate']>) => {
            await saved;
            return target.saveCandidate(...args);
          };
        }
        const value = Reflect.get(target, name) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
    const seen: Array<[boolean, boolean, string]> = [];
    const errors: unknown[] = [];
    const { url } = await setup((req, res) => {
      res.on('error', (err) => errors.push(err));
      (req.redundant!.session.data as { seen?: boolean }).seen = true;
      res.statusCode = 200;
      res.end('handler');
      res.end(); // harmless in Node: so it is here
      // A "send 503 if nothing was sent" middleware, while the session is being saved.
      setImmediate(() => {
        let threw = '';
        try {
          if (!res.headersSent) res.writeHead(503);
        } catch (err) {
          threw = (err as { code: string }).code;
        }
        try {
          res.writeHead(503);
        } catch (err) {
          threw = (err as { code: string }).code;
        }
        res.statusCode = 503; // too late for Node: too late here
        seen.push([res.headersSent, res.writableEnded, threw]);
        saving();
      });
    }, slowStore);
    const res = await client.send(`${url}/late`);
    expect([res.status, res.text]).toEqual([200, 'handler']);
    expect(cookieOf(res)).toMatch(/^rp_session=/);
    expect(seen).toEqual([
      [true, true, 'ERR_HTTP_HEADERS_SENT'],
      [true, true, 'ERR_HTTP_HEADERS_SENT'],
    ]);
    expect(errors).toEqual([]);
  });

  it('keep the Content-Length Node measures for a plain end(text), directly and through the proxy', async () => {
    const { url } = await setup((req, res) => {
      (req.redundant!.session.data as { seen?: boolean }).seen = true;
      res.end('hello');
    });
    const res = await client.send(`${url}/plain`);
    expect([res.text, res.headers['content-length'], res.headers['transfer-encoding']]).toEqual(['hello', '5', undefined]);
    const own = new MemorySessionStore();
    closers.push(() => own.close());
    const worker = redundantWorker({ id: 'n', store: own });
    const direct = await listen((req, r) => worker(req, r, () => r.end('hello')));
    closers.push(direct.close);
    const raw = await rawRequest(direct.url, 'GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect([raw.body, raw.headers['content-length'], raw.headers['transfer-encoding']]).toEqual(['hello', '5', undefined]);
  });
});

describe('Express handlers with the worker', () => {
  it('a second res.json() after the first (a missing return) throws in its own call, as without the worker: the first answer goes as it was', async () => {
    const store = new MemorySessionStore();
    closers.push(() => store.close());
    const worker = redundantWorker({ id: 'a', store });
    const app = express();
    app.use(worker);
    const thrown: string[] = [];
    app.get('/x', (_req, res) => {
      try {
        res.status(400).json({ e: 'bad' });
        res.json({ data: 'a much longer second body than the first one' });
      } catch (err) {
        thrown.push((err as { code: string }).code);
      }
    });
    app.use(worker.errorHandler);
    const server = await listen(app);
    closers.push(server.close);
    const res = await rawRequest(server.url, 'GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect([res.status, res.body, res.headers['content-length']]).toEqual([400, '{"e":"bad"}', '11']);
    expect(thrown).toEqual(['ERR_HTTP_HEADERS_SENT']);
    // The replica lives on.
    expect((await client.send(`${server.url}/x`)).status).toBe(400);
  });
});

