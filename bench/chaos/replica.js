// One application server of the chaos run (bench/chaos/run.js), in its own
// process: Koa + redundantWorker on a RedisSessionStore, moving money in
// PostgreSQL with the handler docs/updates.md describes, written the new way
// (commitOnce, the ledger row with ON CONFLICT DO NOTHING, AlreadyAppliedError
// when an earlier copy of the same request id already committed).
//
// It listens on the fixed port it is given (PORT), so that the gateway's
// upstream URL stays valid when the run restarts it after a kill. It logs
// nothing per request; it counts, and answers { type: 'stats' } over IPC.
//
// Fault injection over IPC: { type: 'kill-after-commit' } arms it; the next
// commit SIGKILLs this process right after COMMIT succeeded and before
// commitOnce's confirm. Before dying it appends one JSON line to FAULT_LOG
// (synchronously), so the run can verify that the fault fired and which
// request it hit.
import { appendFileSync } from 'node:fs';
import http from 'node:http';
import Koa from 'koa';
import pg from 'pg';
import { Redis } from 'ioredis';

// The run loads a snapshot of dist/ taken at its start (others rebuild dist/
// while a run lasts): CHAOS_DIST is that snapshot's URL. Without it, ../../dist.
const distUrl = process.env.CHAOS_DIST ?? new URL('../../dist/', import.meta.url).href;
const { redundantWorker, AlreadyAppliedError, isSupersededError } = await import(new URL('index.js', distUrl).href);
const { RedisSessionStore } = await import(new URL('redis.js', distUrl).href);
if (typeof AlreadyAppliedError !== 'function') {
  process.send?.({ type: 'fatal', error: 'dist/index.js does not export AlreadyAppliedError: run `npm run build`' });
  process.exit(3);
}

const { ID, PORT, REDIS_PORT, SECRET, PG_SCHEMA, LEASE, PREFIX, FAULT_LOG, PG_POOL, SABOTAGE } = process.env;

// A replica whose run went away (killed, crashed) must not stay behind.
process.on('disconnect', () => process.exit(0));

const stats = {
  requests: 0,
  commits: 0,
  alreadyApplied: 0,
  superseded: 0,
  storeUnavailable: 0,
  stopped: 0,
  otherErrors: 0,
  lateConfirm: { 'lease-lost': 0, 'store-unavailable': 0 },
  workerErrors: 0,
  refused: 0,
  errorSamples: [],
};
const sample = (what) => {
  if (stats.errorSamples.length < 5) stats.errorSamples.push(String(what).slice(0, 300));
};

const redis = new Redis({ port: Number(REDIS_PORT), host: '127.0.0.1', maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true });
redis.on('error', () => {}); // reconnects by itself; failures surface as rejected commands
await redis.connect();
const store = new RedisSessionStore({ client: redis, prefix: PREFIX });
const pool = new pg.Pool({
  host: '127.0.0.1',
  port: 5432,
  user: 'postgres',
  database: 'test',
  max: Number(PG_POOL ?? 10),
  options: `-c search_path=${PG_SCHEMA}`,
});
pool.on('error', () => {});
const worker = redundantWorker({ id: ID, store, secret: SECRET, lease: Number(LEASE) });
worker.on('error', () => void stats.workerErrors++);
worker.on('refused', () => void stats.refused++);
worker.on('lateConfirm', (e) => void (stats.lateConfirm[e.reason] = (stats.lateConfirm[e.reason] ?? 0) + 1));

let killAfterCommit = false;

const readJson = async (req) => {
  const chunks = [];
  let size = 0;
  for await (const c of req) {
    size += c.length;
    if (size > 64 * 1024) throw Object.assign(new Error('body too large'), { status: 413, expose: true });
    chunks.push(c);
  }
  return JSON.parse(Buffer.concat(chunks).toString() || '{}');
};

const app = new Koa();
app.silent = true;
app.use(worker);
app.use(async (ctx) => {
  if (ctx.method === 'GET' && ctx.path === '/health') {
    ctx.body = { ok: true, id: ID };
    return;
  }
  if (ctx.method !== 'POST' || ctx.path !== '/transfer') {
    ctx.status = 404;
    ctx.body = { error: 'not found' };
    return;
  }
  stats.requests++;
  const h = ctx.state.redundant;
  let t;
  try {
    t = await readJson(ctx.req);
  } catch {
    ctx.status = 400;
    ctx.body = { error: 'bad json' };
    return;
  }
  const { transferId, from, to, amount } = t;
  if (typeof transferId !== 'string' || !Number.isInteger(from) || !Number.isInteger(to) || from === to || !Number.isInteger(amount) || amount <= 0) {
    ctx.status = 400;
    ctx.body = { error: 'bad transfer' };
    return;
  }
  const db = await pool.connect();
  try {
    await db.query('BEGIN');
    await db.query('SELECT id FROM accounts WHERE id = ANY($1::int[]) ORDER BY id FOR UPDATE', [[from, to]]);
    await db.query('UPDATE accounts SET balance = balance - $1 WHERE id = $2', [amount, from]);
    await db.query('UPDATE accounts SET balance = balance + $1 WHERE id = $2', [amount, to]);
    if (SABOTAGE === 'uncoordinated') {
      // Harness self-check only (run.js --sabotage): commit without the
      // arbitration and without a unique row per request: every copy that
      // gets the locks applies the transfer. The run must see double-applies.
      await db.query('INSERT INTO ledger (request_id, transfer_id, fence, upstream, from_id, to_id, amount) VALUES ($1, $2, 0, $3, $4, $5, $6)',
        [`${h.requestId}/${h.duplicateId}`, transferId, ID, from, to, amount]);
      await db.query('COMMIT');
      ctx.body = { ok: true, by: ID, requestId: h.requestId, transferId };
      return;
    }
    const fence = await h.commitOnce(async (fence) => {
      // One ledger row per request id, in the same transaction: the database
      // itself refuses a second commit of this request.
      const r = await db.query(
        'INSERT INTO ledger (request_id, transfer_id, fence, upstream, from_id, to_id, amount) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (request_id) DO NOTHING',
        [h.requestId, transferId, fence, ID, from, to, amount],
      );
      if (r.rowCount === 0) throw new AlreadyAppliedError();
      // Harness self-check only: one commit in fifty is rolled back and still
      // answered 200. The run must see lost acknowledged transfers.
      if (SABOTAGE === 'ack-without-commit' && Math.random() < 0.02) await db.query('ROLLBACK');
      else await db.query('COMMIT');
      if (killAfterCommit) {
        // The fault: committed in the database, never confirmed in the store.
        appendFileSync(FAULT_LOG, JSON.stringify({ kind: 'kill-after-commit', upstream: ID, requestId: h.requestId, duplicateId: h.duplicateId, transferId, fence, at: Date.now() }) + '\n');
        process.kill(process.pid, 'SIGKILL');
        await new Promise(() => {}); // never resumes
      }
      return fence;
    });
    stats.commits++;
    ctx.body = { ok: true, fence, by: ID, requestId: h.requestId, transferId };
  } catch (err) {
    await db.query('ROLLBACK').catch(() => {});
    if (err instanceof AlreadyAppliedError || err?.code === 'RP_ERR_ALREADY_APPLIED') stats.alreadyApplied++;
    else if (isSupersededError(err)) stats.superseded++;
    else if (err?.code === 'RP_ERR_STORE_UNAVAILABLE') stats.storeUnavailable++;
    else if (h.signal.aborted) stats.stopped++;
    else {
      stats.otherErrors++;
      sample(err?.stack ?? err);
    }
    throw err;
  } finally {
    db.release();
  }
});

const server = http.createServer(app.callback());
server.keepAliveTimeout = 10_000;

// The port was free when the run chose it; right after a kill it may still
// be held for a moment: retry, bounded.
const port = Number(PORT);
for (let attempt = 1; ; attempt++) {
  try {
    await new Promise((resolve, reject) => {
      const onError = (err) => reject(err);
      server.once('error', onError);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', onError);
        resolve();
      });
    });
    break;
  } catch (err) {
    if (err?.code !== 'EADDRINUSE' || attempt >= 50) {
      process.send?.({ type: 'fatal', error: `listen on ${port}: ${err?.message ?? err}` });
      process.exit(4);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

process.on('message', async (m) => {
  if (m?.type === 'kill-after-commit') {
    killAfterCommit = true;
    process.send?.({ type: 'armed', id: m.id });
  } else if (m?.type === 'disarm') {
    killAfterCommit = false;
    process.send?.({ type: 'disarmed', id: m.id });
  } else if (m?.type === 'stats') {
    process.send?.({ type: 'stats', id: m.id, stats });
  } else if (m?.type === 'close') {
    server.closeAllConnections();
    server.close();
    await store.close().catch(() => {});
    redis.disconnect();
    await pool.end().catch(() => {});
    process.send?.({ type: 'closed', id: m.id, stats });
    process.exit(0);
  }
});
process.send?.({ type: 'ready', port });
