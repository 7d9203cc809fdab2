// npm run example:bank              (builds, then runs this; Ctrl-C stops it)
// npm run example:bank -- --self-test   (runs a scripted check and exits: 0 passed, 1 failed)
//
// A small bank on one machine: three replicas of an Express application
// server (examples/bank/replica.js, each in its own process, ids a, b, c)
// behind a Koa gateway that races every request across them, with sessions
// and commit claims in a redis-server of its own and the ledger in
// PostgreSQL (database `test`, in a schema of its own that is dropped on
// exit). Options: --port N (gateway, default 8080; 0 picks a free one),
// --redis URL (use this Redis instead of starting one).

import { fork, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import Koa from 'koa';
import pg from 'pg';
import { Redis } from 'ioredis';
import { redundantProxy } from '../../dist/index.js';
import { RedisSessionStore } from '../../dist/redis.js';

const { values: args } = parseArgs({ options: { 'self-test': { type: 'boolean' }, port: { type: 'string' }, redis: { type: 'string' } } });
const selfTest = args['self-test'] ?? false;
const PG = { host: process.env.PGHOST ?? '127.0.0.1', port: Number(process.env.PGPORT ?? 5432), user: process.env.PGUSER ?? 'postgres', database: process.env.PGDATABASE ?? 'test' };
const SECRET = randomBytes(24).toString('base64url');
const PREFIX = 'bank:';
const schema = `rp_bank_${randomBytes(4).toString('hex')}`;
const say = (line) => console.log(line);

/** What stop() undoes, in reverse order of starting. */
const started = { redisServer: undefined, redisDir: undefined, admin: undefined, replicas: [], client: undefined, store: undefined, proxy: undefined, gateway: undefined };

// ─── Redis: a redis-server of its own on a free port, nothing written to disk ───

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startRedis() {
  if (args.redis) return args.redis;
  const port = await freePort();
  started.redisDir = await mkdtemp(join(tmpdir(), 'rp-bank-redis-'));
  // Its own process group: Ctrl-C must not stop Redis before the gateway and replicas are done with it.
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', started.redisDir], { stdio: 'ignore', detached: true });
  const failed = new Promise((_, reject) => {
    proc.once('error', (err) => reject(new Error(`cannot start redis-server (${err.code === 'ENOENT' ? 'not on PATH; or pass --redis URL' : err.message})`)));
    proc.once('exit', (code) => reject(new Error(`redis-server exited (${code}) before it answered`)));
  });
  started.redisServer = proc;
  const url = `redis://127.0.0.1:${port}`;
  const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => 50 });
  probe.on('error', () => {});
  const ready = (async () => {
    for (let i = 0; i < 200; i++) {
      try {
        if (probe.status === 'wait') await probe.connect();
        if ((await probe.ping()) === 'PONG') return;
      } catch {}
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('redis-server did not answer within 10 s');
  })();
  try {
    await Promise.race([ready, failed]);
  } finally {
    probe.disconnect();
  }
  failed.catch(() => {});
  return url;
}

// ─── PostgreSQL: the accounts and the ledger of transfers, in a schema of its own ───

async function createTables() {
  // application_name: `pg_stat_activity` shows which run a connection is.
  started.admin = new pg.Pool({ ...PG, max: 2, application_name: `rp-bank ${schema}` });
  // An idle connection that PostgreSQL closes (a restart, an administrator) is an 'error' on the pool:
  // without a listener it would end this process before it dropped its schema.
  started.admin.on('error', (err) => console.error(`PostgreSQL: ${err.message}`));
  await started.admin.query(`CREATE SCHEMA ${schema}`);
  started.schema = schema;
  await started.admin.query(`SET search_path TO ${schema}`);
  await started.admin.query(`
    CREATE TABLE ${schema}.accounts (
      id      int PRIMARY KEY,
      owner   text NOT NULL,
      balance bigint NOT NULL CHECK (balance >= 0)
    );
    CREATE TABLE ${schema}.transfers (
      request_id text PRIMARY KEY,          -- one row per request: a second commit of it fails here
      idem_key   text UNIQUE,               -- h.idempotencyKey: finds a retry's first commit even if Redis forgot the key
      fence      bigint NOT NULL,           -- the Redis store's fences are about 1.8e15: past an integer column
      from_id    int NOT NULL REFERENCES ${schema}.accounts,
      to_id      int NOT NULL REFERENCES ${schema}.accounts,
      amount     bigint NOT NULL CHECK (amount > 0),
      replica    text NOT NULL,
      at         timestamptz NOT NULL DEFAULT now()
    );
    INSERT INTO ${schema}.accounts VALUES (1, 'alice', 1000), (2, 'bob', 1000), (3, 'carol', 1000);
  `);
}

// ─── The replicas, each in its own process ───

async function startReplica(id, redisUrl) {
  const child = fork(new URL('./replica.js', import.meta.url), [], {
    env: { ...process.env, ID: id, REDIS_URL: redisUrl, REDIS_PREFIX: PREFIX, PG_SCHEMA: schema, SECRET },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  started.replicas.push(child);
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`replica ${id} not ready within 15 s`)), 15_000);
    child.once('message', (m) => (clearTimeout(timer), resolve(m.port)));
    child.once('exit', (code) => (clearTimeout(timer), reject(new Error(`replica ${id} exited (${code}) before it was ready`))));
  });
  return { id, url: `http://127.0.0.1:${port}` };
}

// ─── The gateway ───

async function startGateway(redisUrl, upstreams) {
  started.client = new Redis(redisUrl, { maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true });
  started.client.on('error', (err) => console.error(`gateway: redis: ${err.message}`));
  await started.client.connect();
  started.store = new RedisSessionStore({ client: started.client, prefix: PREFIX });
  const proxy = redundantProxy({ upstreams, store: started.store, secret: SECRET });
  started.proxy = proxy;
  proxy.on('error', (e) => console.error(`gateway: ${e.source}: ${e.error?.message ?? e.error}`));
  if (!selfTest) {
    proxy.on('race:end', (r) => {
      const sent = r.copies.filter((c) => c.sentAt !== null);
      say(`${r.method} ${r.path} → ${r.status} from ${r.servedBy ?? '-'} (${sent.length} ${sent.length === 1 ? 'copy' : 'copies'}: ${sent.map((c) => `${c.upstream} ${c.outcome}`).join(', ')}; ${r.duration.toFixed(1)} ms)`);
    });
  }
  const app = new Koa();
  app.use(proxy);
  const server = http.createServer(app.callback());
  started.gateway = server;
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(args.port ?? 8080), '127.0.0.1', resolve);
  });
  return { proxy, url: `http://127.0.0.1:${server.address().port}` };
}

// ─── Stopping: gateway first, then replicas, then the stores ───

/** Thrown by boot() once stop() has begun: starting goes no further. */
class Stopped extends Error {}
/** The starting step in flight (settled), which stop() lets finish so that it knows what to undo. */
let booting = Promise.resolve();
function boot(step) {
  if (stopping) throw new Stopped('stopped while starting');
  const p = step();
  booting = p.then(
    () => {},
    () => {},
  );
  return p;
}

let stopping;
function stop(code) {
  stopping ??= (async () => {
    // A step half done (a schema being created, a replica being forked) would be missed by what follows.
    await booting;
    const step = async (what, fn) => {
      try {
        await fn();
      } catch (err) {
        console.error(`stopping ${what}: ${err.message}`);
        code = code || 1;
      }
    };
    if (started.gateway) await step('the gateway', () => new Promise((r) => (started.gateway.close(r), started.gateway.closeIdleConnections())));
    if (started.proxy) await step('the proxy', () => started.proxy.close());
    await Promise.all(
      started.replicas.map((child) =>
        step('a replica', async () => {
          if (child.exitCode !== null || child.signalCode !== null) return;
          const exited = new Promise((r) => child.once('exit', r));
          child.send({ type: 'close' });
          const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
          await exited;
          clearTimeout(timer);
        }),
      ),
    );
    if (started.store) await step('the session store', () => started.store.close());
    if (started.client) await step('the Redis client', () => started.client.quit());
    if (started.schema) await step(`schema ${schema}`, () => started.admin.query(`DROP SCHEMA ${schema} CASCADE`));
    if (started.admin) await step('PostgreSQL', () => started.admin.end());
    if (started.redisServer && started.redisServer.exitCode === null) {
      await step('redis-server', async () => {
        const exited = new Promise((r) => started.redisServer.once('exit', r));
        started.redisServer.kill('SIGTERM');
        await exited;
      });
    }
    if (started.redisDir) await rm(started.redisDir, { recursive: true, force: true });
    process.exit(code);
  })();
  return stopping;
}
// Whatever happens, never leave a redis-server behind (it is in a process group of its own).
process.on('exit', () => started.redisServer?.exitCode === null && started.redisServer.kill('SIGKILL'));
process.on('SIGINT', () => {
  if (stopping) {
    // A step that hangs (PostgreSQL not answering) must not keep a second Ctrl-C from working.
    console.error('stopping now (the schema and Redis may be left behind)');
    process.exit(1);
  }
  say('\nstopping…');
  void stop(0);
});
process.on('SIGTERM', () => void stop(0));
// Whatever fails later, still undo what was started.
process.on('uncaughtException', (err) => {
  console.error(`bank example: ${err.stack ?? err}`);
  void stop(1);
});
process.on('unhandledRejection', (err) => {
  console.error(`bank example: ${err?.stack ?? err}`);
  void stop(1);
});

// ─── The scripted check (--self-test) ───

async function check(url, proxy) {
  const send = async (method, path, body, headers = {}) => {
    const res = await fetch(`${url}${path}`, { method, headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...headers }, body: body ? JSON.stringify(body) : undefined });
    return { status: res.status, headers: res.headers, body: await res.json() };
  };
  const expect = (ok, what) => {
    if (!ok) throw new Error(what);
    say(`  ok  ${what}`);
  };
  const reports = new Map();
  proxy.on('race:end', (r) => reports.set(r.requestId, r));

  // Reads race; the gateway learns from their answers which replicas run the worker (only those get copies of updates).
  const accounts = await send('GET', '/accounts');
  expect(accounts.status === 200 && accounts.body.reduce((s, a) => s + a.balance, 0) === 3000, 'GET /accounts: three accounts holding 3000');
  for (let i = 0; i < 50 && !['a', 'b', 'c'].every((id) => proxy.metrics().upstreams[id]?.worker); i++) await send('GET', '/accounts');
  expect(['a', 'b', 'c'].every((id) => proxy.metrics().upstreams[id].worker), 'the gateway knows all three replicas run the worker');

  // The cart lives in the session: each request may be served by another replica.
  const first = await send('POST', '/cart', { item: 'apple' });
  const cookie = first.headers.get('set-cookie')?.split(';')[0];
  expect(first.status === 200 && cookie?.startsWith('rp_session='), 'POST /cart: the first item, and a session cookie');
  const servers = new Set([first.headers.get('x-redundant-served-by')]);
  for (const item of ['pear', 'plum']) servers.add((await send('POST', '/cart', { item }, { cookie })).headers.get('x-redundant-served-by'));
  const cart = await send('GET', '/cart', undefined, { cookie });
  expect(JSON.stringify(cart.body.items) === '["apple","pear","plum"]', `GET /cart: apple, pear, plum (the adds served by ${[...servers].sort().join(', ')})`);

  // Transfers race across all three replicas; each commits once.
  const transfers = Array.from({ length: 20 }, (_, i) => ({ from: (i % 3) + 1, to: ((i + 1) % 3) + 1, amount: (i % 5) + 1 }));
  const answers = await Promise.all(transfers.map((t, i) => send('POST', '/transfers', t, { 'idempotency-key': `"self-test-${i}"` })));
  expect(answers.every((a) => a.status === 200 && a.body.ok), '20 concurrent transfers answered 200');
  const ids = answers.map((a) => a.headers.get('x-request-id'));
  // A race reports once its losers are stopped, which may be just after its answer.
  for (let i = 0; i < 100 && !ids.every((id) => reports.has(id)); i++) await new Promise((r) => setTimeout(r, 20));
  const raced = ids.map((id) => reports.get(id));
  const copies = raced.reduce((n, r) => n + (r?.copies.filter((c) => c.sentAt !== null).length ?? 0), 0);
  expect(raced.every((r) => r?.committed && r.copies.filter((c) => c.sentAt !== null).length === 3), `each raced as 3 copies (${copies} copies), one of which committed`);
  const retry = await send('POST', '/transfers', transfers[0], { 'idempotency-key': '"self-test-0"' });
  expect(retry.headers.get('idempotent-replayed') === 'true' && retry.body.transfer === answers[0].body.transfer, 'a retry with the same Idempotency-Key is replayed, not run again');
  const poor = await send('POST', '/transfers', { from: 1, to: 2, amount: 1_000_000 });
  expect(poor.status === 422 && poor.body.code === 'INSUFFICIENT_FUNDS', 'a transfer beyond the balance: 422 INSUFFICIENT_FUNDS');
  const bad = await send('POST', '/transfers', { from: 1, to: 1, amount: 5 });
  expect(bad.status === 400 && bad.body.code === 'BAD_TRANSFER', 'a transfer to the same account: 400 BAD_TRANSFER');
  const garbled = await fetch(`${url}/transfers`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{bad' });
  const garbledBody = await garbled.json();
  expect(garbled.status === 400 && garbledBody.code === 'BAD_TRANSFER', 'a transfer whose body is not JSON: 400 BAD_TRANSFER');

  // The database says the same: once each, money neither made nor lost.
  const { rows } = await started.admin.query(`SELECT request_id, fence::text AS fence FROM ${schema}.transfers`);
  expect(rows.length === 20 && new Set(rows.map((r) => r.request_id)).size === 20 && ids.every((id) => rows.some((r) => r.request_id === id)), 'the ledger holds each of the 20 transfers once');
  expect(rows.every((r) => BigInt(r.fence) > 2n ** 31n), `their fences are past a 32-bit integer (e.g. ${rows[0].fence}): the bigint column holds them`);
  const balances = await started.admin.query(`SELECT id, balance::int AS balance FROM ${schema}.accounts ORDER BY id`);
  const expected = [1, 2, 3].map((id) => 1000 - transfers.filter((t) => t.from === id).reduce((s, t) => s + t.amount, 0) + transfers.filter((t) => t.to === id).reduce((s, t) => s + t.amount, 0));
  expect(JSON.stringify(balances.rows.map((r) => r.balance)) === JSON.stringify(expected), `balances ${expected.join(', ')}: every transfer applied exactly once`);
}

// ─── Main ───

try {
  const redisUrl = await boot(startRedis);
  await boot(createTables);
  const upstreams = [];
  for (const id of ['a', 'b', 'c']) upstreams.push(await boot(() => startReplica(id, redisUrl)));
  const { proxy, url } = await boot(() => startGateway(redisUrl, upstreams));
  say(`bank gateway on ${url}, racing replicas ${upstreams.map((u) => `${u.id} (${u.url})`).join(', ')}`);
  say(`sessions in ${redisUrl} (prefix ${PREFIX}), ledger in PostgreSQL database ${PG.database}, schema ${schema}`);
  if (selfTest) {
    say('self-test:');
    await check(url, proxy);
    say('self-test passed');
    await stop(0);
  } else {
    say(`
Try:
  curl -s ${url}/accounts
  curl -si -X POST ${url}/transfers -H 'content-type: application/json' -H 'Idempotency-Key: "t-1"' -d '{"from":1,"to":2,"amount":10}'
      (the same command again replays the answer: idempotent-replayed: true)
  curl -s -c /tmp/bank-cookies -b /tmp/bank-cookies -X POST ${url}/cart -H 'content-type: application/json' -d '{"item":"apple"}'
  curl -s -b /tmp/bank-cookies ${url}/cart
  psql -h ${PG.host} -U ${PG.user} ${PG.database} -c 'SELECT * FROM ${schema}.transfers'

Ctrl-C stops everything (and drops schema ${schema}).
`);
  }
} catch (err) {
  if (!(err instanceof Stopped)) console.error(selfTest ? `self-test FAILED: ${err.message}` : `bank example: ${err.message}`);
  await stop(1);
}
