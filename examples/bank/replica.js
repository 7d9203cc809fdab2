// One replica of the bank's application server: Express + redundantWorker,
// sessions and commit claims in Redis (RedisSessionStore), the ledger in
// PostgreSQL. examples/bank/run.js starts three of these in processes of
// their own (ids a, b, c) and talks to each over IPC: it says `ready` with
// its port, and stops on `close`.

import http from 'node:http';
import express from 'express';
import pg from 'pg';
import { Redis } from 'ioredis';
import { AlreadyAppliedError, redundantWorker } from '../../dist/index.js';
import { RedisSessionStore } from '../../dist/redis.js';

const { ID, REDIS_URL, REDIS_PREFIX, PG_SCHEMA, SECRET } = process.env;

// Fail fast while Redis is down rather than queue (what the store expects).
const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true });
redis.on('error', (err) => console.error(`replica ${ID}: redis: ${err.message}`));
await redis.connect();
const store = new RedisSessionStore({ client: redis, prefix: REDIS_PREFIX });
const pool = new pg.Pool({
  host: process.env.PGHOST ?? '127.0.0.1',
  port: Number(process.env.PGPORT ?? 5432),
  user: process.env.PGUSER ?? 'postgres',
  database: process.env.PGDATABASE ?? 'test',
  max: 10,
  options: `-c search_path=${PG_SCHEMA}`,
});
pool.on('error', (err) => console.error(`replica ${ID}: postgres: ${err.message}`));

const worker = redundantWorker({ id: ID, store, secret: SECRET });
worker.on('error', (e) => console.error(`replica ${ID}: store ${e.operation} failed: ${e.error?.message ?? e.error}`));
worker.on('lateConfirm', (e) => console.error(`replica ${ID}: late confirm of ${e.requestId} (${e.reason})`));

const app = express();
// The worker comes before any body parser: it checks the signed body as it streams in.
app.use(worker);
app.use(express.json());
// Each answer says which replica made it (x-redundant-served-by says which one the client got).
app.use((req, res, next) => {
  res.setHeader('x-bank-replica', ID);
  next();
});

app.get('/accounts', async (req, res) => {
  const { rows } = await pool.query('SELECT id, owner, balance::text AS balance FROM accounts ORDER BY id');
  res.json(rows.map((r) => ({ id: r.id, owner: r.owner, balance: Number(r.balance) })));
});

/**
 * A transfer, committed exactly once whichever copies race it: the rows are
 * locked and changed in a transaction, and the transfer's row (unique per
 * request id, and per Idempotency-Key) is written and committed inside
 * commitOnce. The copy that loses the claim rolls back (SupersededError →
 * 409 `lost`, never shown to the client).
 */
app.post('/transfers', async (req, res) => {
  const h = req.redundant;
  const { from, to, amount } = req.body ?? {};
  if (![from, to, amount].every(Number.isSafeInteger) || amount <= 0 || from === to) {
    res.status(400).json({ code: 'BAD_TRANSFER', message: 'give { from, to, amount }: two different account ids and an amount > 0 (integers)' });
    return;
  }
  const db = await pool.connect();
  let broken = false;
  try {
    await db.query('BEGIN');
    const { rows } = await db.query('SELECT id, balance FROM accounts WHERE id = ANY($1::int[]) ORDER BY id FOR UPDATE', [[from, to]]);
    if (rows.length !== 2) {
      await db.query('ROLLBACK');
      res.status(404).json({ code: 'NO_SUCH_ACCOUNT', message: `account ${rows.some((r) => r.id === from) ? to : from} does not exist` });
      return;
    }
    if (Number(rows.find((r) => r.id === from).balance) < amount) {
      await db.query('ROLLBACK');
      res.status(422).json({ code: 'INSUFFICIENT_FUNDS', message: `account ${from} cannot pay ${amount}` });
      return;
    }
    await db.query('UPDATE accounts SET balance = balance - $1 WHERE id = $2', [amount, from]);
    await db.query('UPDATE accounts SET balance = balance + $1 WHERE id = $2', [amount, to]);
    const fence = await h.commitOnce(async (fence) => {
      // The fence is a bigint: the Redis store's fences are about 1.8e15.
      const row = await db.query(
        'INSERT INTO transfers (request_id, idem_key, fence, from_id, to_id, amount, replica) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING',
        [h.requestId, h.idempotencyKey, fence, from, to, amount, ID],
      );
      // Already there: an earlier copy committed this request (or this key) and died before confirming.
      if (row.rowCount === 0) throw new AlreadyAppliedError();
      await db.query('COMMIT');
      return fence;
    });
    res.json({ ok: true, transfer: h.requestId, from, to, amount, fence, replica: ID });
  } catch (err) {
    await db.query('ROLLBACK').catch(() => (broken = true));
    throw err;
  } finally {
    db.release(broken);
  }
});

// The session cart: whatever the adopted copy left in session.data is the
// session's state for the next request, on any replica.
app.get('/cart', (req, res) => {
  res.json({ items: req.redundant.session.data.items ?? [] });
});

app.post('/cart', (req, res) => {
  const { item } = req.body ?? {};
  if (typeof item !== 'string' || item === '' || item.length > 100) {
    res.status(400).json({ code: 'BAD_ITEM', message: 'give { item }: a name of 1 to 100 characters' });
    return;
  }
  const data = req.redundant.session.data;
  data.items = [...(data.items ?? []), item];
  res.json({ items: data.items, replica: ID });
});

app.delete('/cart', (req, res) => {
  req.redundant.session.data.items = [];
  res.json({ items: [] });
});

// This library's errors (409 lost, 409 applied, 503 store unavailable) as JSON; others to Express.
app.use(worker.errorHandler);
app.use((err, req, res, _next) => {
  // A body that is not JSON (express.json()'s own 400): the client's mistake, not ours.
  if (err.type === 'entity.parse.failed') {
    res.status(400).json({ code: req.path === '/transfers' ? 'BAD_TRANSFER' : 'BAD_BODY', message: 'the body is not valid JSON' });
    return;
  }
  console.error(`replica ${ID}: ${err.stack ?? err}`);
  if (!res.headersSent) res.status(500).json({ code: 'INTERNAL', message: 'internal error' });
});

const server = http.createServer(app);
server.listen(0, '127.0.0.1', () => process.send({ type: 'ready', id: ID, port: server.address().port }));

process.on('message', async (m) => {
  if (m?.type !== 'close') return;
  await new Promise((resolve) => {
    server.close(resolve);
    server.closeIdleConnections();
  });
  await store.close();
  await redis.quit();
  await pool.end();
  process.exit(0);
});
// Ctrl-C in a terminal reaches the whole process group: run.js closes the
// replicas in order, after the gateway. Were run.js gone, so are we.
process.on('SIGINT', () => {});
process.on('disconnect', () => process.exit(1));
