import type { ErrorRequestHandler } from 'express';
import express from 'express';
import { afterAll, describe, expect, it } from '@jest/globals';
import { AlreadyAppliedError, isSupersededError, MemorySessionStore, redundantProxy, redundantWorker, type RaceReport, type RedundantHandle } from '../../lib/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { testClient } from '../helpers/client.js';
import { mountGateway } from '../helpers/gateway.js';
import { eventually } from '../helpers/replica.js';
import { listen, sleep } from '../helpers/upstream.js';

// worker.errorHandler in Express answers as the Koa path does: a copy that
// lost the commit answers 409 `lost` whatever its handler threw afterwards,
// and a copy the proxy stopped never reaches Express's own error handler.

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

describe('the Express worker’s errorHandler', () => {
  it('a loser whose handler wraps the SupersededError still answers 409 lost; a stopped copy’s error goes nowhere', async () => {
    const store = new MemorySessionStore();
    open.push(store);
    const escaped: unknown[] = [];
    let stoppedResponse: { headersSent: boolean } | undefined;
    let cThrew: () => void = () => undefined;
    const threw = new Promise<void>((r) => (cThrew = r));
    const answers: Array<[string, number, unknown]> = [];
    let committed: () => void = () => undefined;
    const aCommitted = new Promise<void>((r) => (committed = r));
    const replicas = [];
    for (const id of ['a', 'b', 'c']) {
      const worker = redundantWorker({ id, store });
      const app = express();
      app.use(worker);
      app.use(async (req, res) => {
        if (req.method === 'GET') return void res.json({ ok: true });
        const h = (req as unknown as { redundant: RedundantHandle }).redundant;
        if (id === 'c') {
          stoppedResponse = res;
          // Never answers: it is stopped after a commits, and throws what stopped it.
          await new Promise((resolve) => h.signal.addEventListener('abort', resolve, { once: true }));
          setImmediate(cThrew); // once Express has passed the error on
          throw h.signal.reason;
        }
        if (id === 'b') await aCommitted;
        try {
          await h.commitOnce(async () => (id === 'a' ? sleep(30) : undefined));
        } catch (err) {
          if (isSupersededError(err)) throw new Error('payment step failed', { cause: err }); // not the library's error any more
          throw err;
        }
        if (id === 'a') committed();
        res.json({ by: id });
      });
      app.use(worker.errorHandler);
      app.use(((err, _req, _res, next) => {
        escaped.push(err);
        next(err);
      }) as ErrorRequestHandler);
      const server = await listen(app);
      server.server.on('request', (req, res) => res.on('finish', () => req.method === 'POST' && answers.push([id, res.statusCode, res.getHeader('x-redundant-commit')])));
      open.push(server);
      replicas.push({ id, url: server.url });
    }
    const proxy = redundantProxy({ upstreams: replicas, store });
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    const reports: RaceReport[] = [];
    proxy.on('race:end', (r) => reports.push(r));
    for (let i = 0; i < 50 && !Object.values(proxy.metrics().upstreams).every((u) => u.worker); i++) await client.send(`${gw.url}/health`);
    const res = await client.send(`${gw.url}/pay`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    expect(res.status).toBe(200);
    expect(res.json()).toEqual({ by: 'a' });
    const report = await eventually(() => reports.find((r) => r.update));
    expect(report.copies.map((c) => [c.upstream, c.outcome]).sort()).toEqual([
      ['a', 'won'],
      ['b', 'lost'],
      ['c', 'cancelled'],
    ]);
    await eventually(() => answers.some(([id]) => id === 'b'));
    expect(answers.find(([id]) => id === 'b')).toEqual(['b', 409, 'lost']);
    await threw;
    await sleep(20);
    expect(escaped).toEqual([]);
    // Nobody listens to a stopped copy: no answer was written for it.
    expect(stoppedResponse?.headersSent).toBe(false);
  });

  it('a copy whose commit function finds the request already applied answers 409 `applied` with the code, even when its handler wraps the error', async () => {
    const store = new MemorySessionStore();
    open.push(store);
    const worker = redundantWorker({ id: 'a', store });
    const app = express();
    app.use(worker);
    app.post('/wrapped', async (req) => {
      const h = (req as unknown as { redundant: RedundantHandle }).redundant;
      try {
        await h.commitOnce(() => Promise.reject(new AlreadyAppliedError()));
      } catch (err) {
        throw new Error('transfer failed', { cause: err });
      }
    });
    app.post('/bare', async (req) => {
      const h = (req as unknown as { redundant: RedundantHandle }).redundant;
      await h.commitOnce(() => Promise.reject(new AlreadyAppliedError()));
    });
    app.use(worker.errorHandler);
    const server = await listen(app);
    open.push(server);
    for (const path of ['/wrapped', '/bare']) {
      const res = await client.send(`${server.url}${path}`, { method: 'POST' });
      expect(res.status).toBe(409);
      expect(res.headers['x-redundant-commit']).toBe('applied');
      expect(res.json()).toMatchObject({ code: 'RP_ERR_ALREADY_APPLIED' });
    }
  });
});
