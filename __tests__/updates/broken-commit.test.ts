import http from 'node:http';
import { afterAll, describe, expect, it } from '@jest/globals';
import { MemorySessionStore, redundantProxy, redundantWorker, type RaceReport, type RedundantHandle } from '../../lib/index.js';
import { testClient } from '../helpers/client.js';
import { listen } from '../helpers/upstream.js';
import { sealId } from '../../lib/wire/protocol.js';

// An update's copy that committed and then broke (its connection reset before
// any answer) said nothing of its commit. The other copies answered without
// committing (a 400 of their own). Adopting that 400 would tell the client
// the update did not happen: its retry would apply it again. The proxy seals
// the request first, finds the commit, and says it was applied.

const client = testClient();
const closers: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  for (const close of closers.reverse()) await close();
  await client.close();
});

type Handler = (h: RedundantHandle, req: http.IncomingMessage, res: http.ServerResponse) => void;

async function setup(handlers: Record<string, Handler>) {
  const store = new MemorySessionStore();
  const upstreams = [];
  for (const [id, handler] of Object.entries(handlers)) {
    const worker = redundantWorker({ id, store });
    const server = await listen((req, res) =>
      worker(req, res, (err) => {
        if (err) return worker.errorHandler(err, req, res, () => res.destroy());
        // Reads answer at once: they teach the proxy that every upstream runs the worker.
        if (req.method === 'GET') return void res.end('{}');
        handler((req as unknown as { redundant: RedundantHandle }).redundant, req, res);
      }),
    );
    closers.push(server.close);
    upstreams.push({ id, url: server.url });
  }
  const proxy = redundantProxy({ upstreams, store, timeout: 10_000 });
  const reports: RaceReport[] = [];
  proxy.on('race:end', (r) => reports.push(r));
  const gateway = await listen(proxy.handler);
  closers.push(gateway.close, () => proxy.close());
  for (let i = 0; i < 6; i++) await client.send(`${gateway.url}/warm`);
  return { url: gateway.url, reports, store };
}

describe('an update whose committing copy broke without answering', () => {
  it('is not answered with another copy’s answer that did not commit: the proxy seals, finds the commit, and says it was applied', async () => {
    let applied = 0;
    let releaseOthers!: () => void;
    const committed = new Promise<void>((r) => (releaseOthers = r));
    const invalid: Handler = (_h, _req, res) => {
      // They answer only once the first copy committed and broke.
      void committed.then(() => {
        res.statusCode = 400;
        res.end(JSON.stringify({ invalid: true }));
      });
    };
    const { url, reports } = await setup({
      a: (h, req) => {
        void h.commitOnce(async () => {
          applied++;
        }).then(() => {
          req.socket.destroy();
          setTimeout(releaseOthers, 20);
        });
      },
      b: invalid,
      c: invalid,
    });
    const res = await client.send(`${url}/transfer`, { method: 'POST', body: '{}' });
    expect(applied).toBe(1);
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_ANSWER_LOST' });
    const report = reports.at(-1)!;
    expect(report.update).toBe(true);
    expect(report.copies.find((c) => c.upstream === 'a')!.outcome).toBe('failed');
  });

  it('is answered with the other copy’s answer when the broken copy never claimed', async () => {
    const { url, store } = await setup({
      a: (_h, req) => void setImmediate(() => req.socket.destroy()),
      b: (_h, _req, res) => void setTimeout(() => ((res.statusCode = 400), res.end(JSON.stringify({ invalid: 'b' }))), 30),
    });
    const res = await client.send(`${url}/transfer`, { method: 'POST', body: '{}' });
    expect(res.status).toBe(400);
    expect(res.json()).toEqual({ invalid: 'b' });
    // Adopted only once sealed: no copy can commit after the client was told nothing was.
    const requestId = String(res.headers['x-request-id']);
    expect((await store.getRequest(requestId))!.commit).toMatchObject({ state: 'committed', holder: sealId(requestId) });
  });
});
