import { afterAll, describe, expect, it } from '@jest/globals';
import { MemorySessionStore, redundantProxy, type RaceReport, type WorkerErrorEvent } from '../../lib/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { testClient } from '../helpers/client.js';
import { mountGateway } from '../helpers/gateway.js';
import { eventually, startReplica } from '../helpers/replica.js';

// A handler that throws after its copy committed: the update is applied, and
// the answer the handler would have given is gone. The client hears exactly
// that (502 RP_ERR_ANSWER_LOST), never a bare 500 it would take for "not
// applied", and a retry with the same Idempotency-Key hears it again without
// running the update again. The app hears of its handler's failure.

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

async function fleet(kind: 'koa' | 'express', listen: boolean) {
  const store = new MemorySessionStore();
  open.push(store);
  let applied = 0;
  const errors: WorkerErrorEvent[] = [];
  const replicas = [];
  for (const id of ['a', 'b']) {
    const replica = await startReplica(kind, { id, store }, async (h) => {
      if (!h.update) return { body: { ok: true } };
      await h.commitOnce(() => void applied++);
      throw new Error(`formatting the answer failed on ${id}`);
    });
    if (listen) replica.worker.on('error', (e) => errors.push(e));
    open.push(replica);
    replicas.push({ id, url: replica.url });
  }
  const proxy = redundantProxy({ upstreams: replicas, store, copies: 2 });
  const gw = await mountGateway('node', proxy);
  open.push(gw, proxy);
  const reports: RaceReport[] = [];
  proxy.on('race:end', (r) => reports.push(r));
  for (let i = 0; i < 50 && !Object.values(proxy.metrics().upstreams).every((u) => u.worker); i++) await client.send(`${gw.url}/health`);
  const post = (key: string) => client.send(`${gw.url}/pay`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json', 'idempotency-key': key } });
  return { post, reports, errors, applied: () => applied };
}

describe.each(['koa', 'express'] as const)('a handler that throws after its commit (%s)', (kind) => {
  it('answers 502 RP_ERR_ANSWER_LOST, adopted as the committed answer and replayed to a retry; the worker says why', async () => {
    const f = await fleet(kind, true);
    const res = await f.post('after-commit-1');
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_ANSWER_LOST' });
    expect(String(res.json().message)).toMatch(/handler failed/);
    expect(f.applied()).toBe(1);
    const report = await eventually(() => f.reports.find((r) => r.update));
    expect(report.copies.map((c) => c.outcome).sort()).toEqual(['lost', 'won']);
    const winner = report.copies.find((c) => c.outcome === 'won')!.upstream;
    expect(f.errors).toHaveLength(1);
    expect(f.errors[0]).toMatchObject({ requestId: report.requestId, operation: 'handler' });
    expect((f.errors[0]!.error as Error).message).toBe(`formatting the answer failed on ${winner}`);

    const retry = await f.post('after-commit-1');
    expect(retry.status).toBe(502);
    expect(retry.json()).toMatchObject({ code: 'RP_ERR_ANSWER_LOST' });
    expect(f.applied()).toBe(1);
  });

  it('without an error listener, each failure is written to console.error', async () => {
    const f = await fleet(kind, false);
    const said: unknown[][] = [];
    const error = console.error;
    console.error = (...args: unknown[]) => void said.push(args);
    try {
      expect((await f.post('after-commit-2')).status).toBe(502);
      expect((await f.post('after-commit-3')).status).toBe(502);
    } finally {
      console.error = error;
    }
    expect(f.applied()).toBe(2);
    expect(said).toHaveLength(2);
    expect(String(said[0]![0])).toMatch(/the handler threw after its commit/);
    expect((said[1]![1] as Error).message).toMatch(/^formatting the answer failed on [ab]$/);
  });
});
