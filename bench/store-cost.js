// Scenario f: what the session store costs per request, by kind of request
// and number of copies, for both stores.
//
// One child process per store holds five replicas (`redundantWorker` on
// node:http, ids a–e) and a gateway (`redundantProxy` on node:http) that is
// built anew for each number of copies (2, 3, 5). For every kind of request:
//
//   read            GET, no session cookie (the proxy mints an id: nothing to load)
//   read+session    GET with the session cookie of an existing session (loaded)
//   session update  POST that changes the session and commits nothing
//   update          POST that runs `commitOnce` (claim, confirm)
//   keyed update    the same with an `Idempotency-Key` (one key per request)
//
// it measures, per request:
//   - store calls, by method (every role: gateway and workers), counted by a
//     wrapper around each store;
//   - for Redis: scripts and commands (`INFO commandstats` deltas, commands run
//     inside scripts included) and the server's CPU (`INFO cpu`, user +
//     system: what one Redis core spends);
//   - round trips on the answer's critical path: every store call is delayed by
//     D ms (a stand-in for a network round trip) and the request's latency is
//     measured with and without the delay, sequentially:
//     (median with − median without) / D is the number of store round trips
//     the client waits for. Calls made in parallel count once, calls off the
//     critical path (bookkeeping after the answer, losers) not at all.
//
// Load: a closed loop of `concurrency` requests at a time for the counts, one
// request at a time for the round trips. Bounded: `count` requests per cell.
//
// Run alone: `node bench/store-cost.js [--quick]` (JSON on stdout). From
// bench/run.js: scenarioStoreCost({ quick, dist, log }).

import { randomBytes } from 'node:crypto';
import http from 'node:http';
import os from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { countedStore, redisCommands, redisCpuInfo, startRedis, stopRedis } from './bookkeeping.js';
import { forkChild, runStandalone, stopChild } from './child.js';
import { median } from './model.js';

const SELF = fileURLToPath(import.meta.url);
const DEFAULT_DIST = fileURLToPath(new URL('../dist/', import.meta.url));
const UPSTREAM_IDS = ['a', 'b', 'c', 'd', 'e'];

export const STORE_COST_CONFIG = {
  quick: { copies: [3], count: 150, concurrency: 8, delayMs: 20, latencyRequests: 9 },
  full: { copies: [2, 3, 5], count: 600, concurrency: 8, delayMs: 20, latencyRequests: 25 },
};

export const KINDS = [
  { kind: 'read', method: 'GET', path: '/read', session: false },
  { kind: 'read+session', method: 'GET', path: '/read', session: true },
  { kind: 'session update', method: 'POST', path: '/cart', session: true },
  { kind: 'update', method: 'POST', path: '/update', session: true },
  { kind: 'keyed update', method: 'POST', path: '/update', session: true, keyed: true },
];

// ====================================================================== parent

export async function scenarioStoreCost({ quick = false, dist = process.env.RP_BENCH_DIST ?? DEFAULT_DIST, log = (...m) => console.error(...m) } = {}) {
  const cfg = quick ? STORE_COST_CONFIG.quick : STORE_COST_CONFIG.full;
  const { Pool } = await import('undici');
  const children = new Set();
  let redis = null;
  let admin = null;
  const onExit = () => {
    for (const c of children) c.kill('SIGKILL');
    redis?.process.kill('SIGKILL');
  };
  process.on('exit', onExit);
  const started = performance.now();
  const loadavgAtStart = os.loadavg();
  try {
    redis = await startRedis();
    const { Redis } = await import('ioredis');
    admin = new Redis({ host: '127.0.0.1', port: redis.port, maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true });
    admin.on('error', () => {});
    await admin.connect();
    const redisVersion = (await admin.info('server')).match(/redis_version:(\S+)/)?.[1] ?? null;
    log(`store cost: redis-server ${redisVersion} on 127.0.0.1:${redis.port}; copies ${cfg.copies.join(', ')}; ${cfg.count} requests per cell (${cfg.concurrency} at a time), critical path from ${cfg.latencyRequests} sequential requests with and without a ${cfg.delayMs} ms delay on every store call`);
    const secret = randomBytes(24).toString('hex');
    const results = { memory: {}, redis: {} };
    for (const variant of ['memory', 'redis']) {
      const node = forkChild(SELF, ['--child', JSON.stringify({ variant, secret, redisPort: redis.port })], { name: `store-cost ${variant}`, dist, children });
      const { port } = await node.ready;
      const origin = `http://127.0.0.1:${port}`;
      try {
        for (const copies of cfg.copies) {
          await node.ask('configure', { copies });
          await warmUp(Pool, origin, node, copies);
          const cells = {};
          for (const k of KINDS) {
            // Counts and CPU: a closed loop, its clients' sessions made before the counting starts.
            const loopClients = await Promise.all(Array.from({ length: cfg.concurrency }, () => sessionFor(Pool, origin, k)));
            await sleep(100);
            await node.ask('reset');
            const before = variant === 'redis' ? { cmd: await redisCommands(admin), cpu: await redisCpuInfo(admin) } : null;
            const load = await closedLoop(loopClients, k, cfg.count);
            await sleep(300); // bookkeeping off the critical path and stopped losers settle
            await Promise.all(loopClients.map((c) => c.close()));
            const after = variant === 'redis' ? { cmd: await redisCommands(admin), cpu: await redisCpuInfo(admin) } : null;
            const stats = await node.ask('stats');
            const n = load.ok;
            // Round trips on the critical path: sequential, alternating without and with the delay.
            const plain = [];
            const delayed = [];
            const seq = await sessionFor(Pool, origin, k);
            for (let i = 0; i < cfg.latencyRequests; i++) {
              await node.ask('delay', { ms: 0 });
              plain.push(await timed(seq, k));
              await node.ask('delay', { ms: cfg.delayMs });
              delayed.push(await timed(seq, k));
            }
            await node.ask('delay', { ms: 0 });
            await seq.close();
            const cell = {
              requests: n,
              failed: load.failed,
              statuses: load.statuses,
              storeCallsPerRequest: perRequest(stats.storeCalls, n),
              storeCallsTotalPerRequest: round(sum(stats.storeCalls) / n),
              criticalPathRoundTrips: round((median(delayed) - median(plain)) / cfg.delayMs, 1),
              p50Ms: round(median(plain), 2),
              p50DelayedMs: round(median(delayed), 2),
              copiesPerRequest: stats.races.requests ? round(stats.races.copiesSent / stats.races.requests) : null,
              raceOutcomes: stats.races.outcomes,
              bookkeepingErrors: stats.errors,
            };
            if (before && after) {
              cell.redisScriptsPerRequest = round((after.cmd.scripts - before.cmd.scripts) / n);
              cell.redisCommandsPerRequest = round((after.cmd.total - before.cmd.total) / n, 1);
              cell.redisCpuMicrosPerRequest = before.cpu !== null && after.cpu !== null ? round((after.cpu - before.cpu) / n, 1) : null;
            }
            cells[k.kind] = cell;
            log(
              `   ${variant.padEnd(6)} copies ${copies}  ${k.kind.padEnd(14)} store calls/req ${cell.storeCallsTotalPerRequest.toFixed(2).padStart(5)}  critical-path round trips ${cell.criticalPathRoundTrips.toFixed(1)}` +
                (cell.redisCommandsPerRequest !== undefined ? `  redis scripts/req ${cell.redisScriptsPerRequest.toFixed(2)}, commands/req ${cell.redisCommandsPerRequest.toFixed(1)}, CPU ${cell.redisCpuMicrosPerRequest?.toFixed(0)} µs/req` : '') +
                (cell.failed ? `  FAILED ${cell.failed}` : ''),
            );
          }
          results[variant][copies] = cells;
        }
      } finally {
        await stopChild(node.child);
      }
    }
    return {
      scenario: 'store-cost',
      quick,
      config: {
        ...cfg,
        kinds: KINDS.map((k) => k.kind),
        layout: 'one child process per store: gateway (redundantProxy on node:http, secret) + 5 replicas (redundantWorker on node:http, ids a–e); memory: one MemorySessionStore shared by all; redis: one ioredis client and RedisSessionStore per role',
        handlers: 'read: 200 tiny JSON; session update: session.data.n += 1; update: commitOnce(async (fence) => fence); keyed update: the same with a fresh Idempotency-Key',
      },
      redis: { version: redisVersion, port: redis.port },
      machine: { nproc: os.cpus().length, loadavgAtStart, loadavgAtEnd: os.loadavg(), node: process.version },
      results,
      durationSec: (performance.now() - started) / 1000,
    };
  } finally {
    await Promise.allSettled([...children].map((c) => stopChild(c)));
    if (admin) admin.disconnect();
    if (redis) await stopRedis(redis);
    process.off('exit', onExit);
  }
}

const sum = (counts) => Object.values(counts ?? {}).reduce((a, b) => a + b, 0);
const round = (x, digits = 3) => Math.round(x * 10 ** digits) / 10 ** digits;

function perRequest(counts, n) {
  return Object.fromEntries(
    Object.entries(counts)
      .filter(([, v]) => v)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([k, v]) => [k, round(v / n)]),
  );
}

/** Until the gateway has seen every replica answer as a worker (updates go to one copy before that), then a few of each kind. */
async function warmUp(Pool, origin, node, copies) {
  const deadline = performance.now() + 30_000;
  const reads = KINDS[0];
  const run = async (k, count) => {
    const clients = await Promise.all(Array.from({ length: 8 }, () => sessionFor(Pool, origin, k)));
    await closedLoop(clients, k, count);
    await Promise.all(clients.map((c) => c.close()));
  };
  for (;;) {
    await run(reads, 100);
    const { metrics } = await node.ask('stats');
    if (UPSTREAM_IDS.every((id) => metrics.upstreams[id]?.worker === true)) break;
    if (performance.now() > deadline) throw new Error(`copies ${copies}: the gateway did not see all five upstreams answer as workers within 30 s`);
  }
  for (const k of KINDS) await run(k, 60);
}

/** A client of its own: a pool, and a session cookie when the kind needs one. */
async function sessionFor(Pool, origin, k) {
  const pool = new Pool(origin, { connections: 1, pipelining: 1 });
  let cookie = null;
  if (k.session) {
    // The proxy sends the cookie with the first answer that saved session data.
    const res = await pool.request({ path: '/cart', method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    await res.body.dump();
    const set = [res.headers['set-cookie']].flat().find(Boolean);
    if (!set) throw new Error(`the proxy sent no session cookie (status ${res.statusCode})`);
    cookie = String(set).split(';')[0];
  }
  return {
    async send(kind) {
      const headers = {};
      if (cookie) headers.cookie = cookie;
      if (kind.method === 'POST') headers['content-type'] = 'application/json';
      if (kind.keyed) headers['idempotency-key'] = randomBytes(12).toString('hex');
      const res = await pool.request({ path: kind.path, method: kind.method, headers, body: kind.method === 'POST' ? '{"item":1}' : undefined, headersTimeout: 10_000, bodyTimeout: 10_000 });
      await res.body.dump();
      return res.statusCode;
    },
    close: () => pool.close(),
  };
}

async function timed(client, k) {
  const t0 = performance.now();
  const status = await client.send(k);
  const ms = performance.now() - t0;
  if (status < 200 || status > 299) throw new Error(`${k.kind}: status ${status} while timing the critical path`);
  return ms;
}

/** `count` requests of kind `k`, one at a time per client. */
async function closedLoop(clients, k, count) {
  let next = 0;
  let ok = 0;
  let failed = 0;
  const statuses = {};
  await Promise.all(
    clients.map(async (client) => {
      while (next < count) {
        next++;
        try {
          const status = await client.send(k);
          statuses[status] = (statuses[status] ?? 0) + 1;
          if (status >= 200 && status <= 299) ok++;
          else failed++;
        } catch {
          failed++;
        }
      }
    }),
  );
  return { ok, failed, statuses };
}

// ======================================================================= child

async function childMain(config) {
  const dist = process.env.RP_BENCH_DIST ?? DEFAULT_DIST;
  const lib = await import(pathToFileURL(`${dist.replace(/\/?$/, '/')}index.js`).href);
  const { variant, secret } = config;
  const storeCalls = {};
  const clients = [];
  const stores = [];
  const servers = [];
  const delay = { ms: 0 };
  let proxy = null;
  let gatewayStore = null;
  let errors = 0;
  let races;
  const resetRaces = () => (races = { requests: 0, copiesSent: 0, outcomes: {} });
  resetRaces();

  let shared = null;
  async function storeFor(role) {
    if (variant === 'memory') {
      if (!shared) {
        const real = new lib.MemorySessionStore();
        stores.push(real);
        shared = countedStore(real, storeCalls, delay);
      }
      return shared;
    }
    const { Redis } = await import('ioredis');
    const { RedisSessionStore } = await import(pathToFileURL(`${dist.replace(/\/?$/, '/')}redis.js`).href);
    const client = new Redis({ host: '127.0.0.1', port: config.redisPort, maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true, connectionName: `rp-cost-${role}` });
    client.on('error', () => {});
    clients.push(client);
    await client.connect();
    const real = new RedisSessionStore({ client, prefix: 'rpcost:' });
    stores.push(real);
    return countedStore(real, storeCalls, delay);
  }

  const listen = (server) =>
    new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve(server.address().port));
    });

  const upstreams = [];
  for (const id of UPSTREAM_IDS) {
    const worker = lib.redundantWorker({ id, store: await storeFor(id), secret });
    worker.on('error', () => errors++);
    const server = http.createServer((req, res) => {
      const fail = (err) => {
        if (res.headersSent || res.destroyed) return void res.destroy();
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(String(err?.message ?? err));
      };
      const answer = (body) => {
        // setHeader, not writeHead: the worker adds its session header when the answer ends.
        const out = JSON.stringify(body);
        res.setHeader('content-type', 'application/json');
        res.setHeader('content-length', Buffer.byteLength(out));
        res.end(out);
      };
      worker(req, res, (err) => {
        if (err) return worker.errorHandler(err, req, res, fail);
        req.resume();
        req.on('end', () => {
          const h = req.redundant;
          if (req.url === '/cart') {
            h.session.data.n = (Number(h.session.data.n) || 0) + 1;
            return answer({ ok: true, upstream: id, n: h.session.data.n });
          }
          if (req.url === '/update') {
            return h.commitOnce(async (fence) => fence).then((fence) => answer({ ok: true, upstream: id, fence }), (e) => worker.errorHandler(e, req, res, fail));
          }
          answer({ ok: true, upstream: id });
        });
      });
    });
    server.keepAliveTimeout = 30_000;
    servers.push(server);
    upstreams.push({ id, url: `http://127.0.0.1:${await listen(server)}` });
  }
  gatewayStore = await storeFor('gateway');

  let handler = null;
  const gateway = http.createServer((req, res) => handler(req, res));
  gateway.keepAliveTimeout = 30_000;
  servers.push(gateway);

  async function configure({ copies }) {
    if (proxy) await proxy.close();
    proxy = lib.redundantProxy({ upstreams, store: gatewayStore, secret, copies });
    proxy.on('error', () => errors++);
    proxy.on('race:end', (report) => {
      races.requests++;
      races.outcomes[report.outcome] = (races.outcomes[report.outcome] ?? 0) + 1;
      for (const c of report.copies) if (c.sentAt !== null) races.copiesSent++;
    });
    handler = proxy.handler;
  }

  let closing = false;
  async function close() {
    if (closing) return;
    closing = true;
    const t = setTimeout(() => process.exit(0), 5000);
    if (proxy) await Promise.race([proxy.close(), sleep(2000)]);
    for (const s of servers) s.closeAllConnections?.();
    await Promise.allSettled(servers.map((s) => new Promise((r) => s.close(r))));
    await Promise.allSettled(stores.map((s) => s.close()));
    for (const c of clients) c.disconnect();
    clearTimeout(t);
    process.exit(0);
  }
  process.on('disconnect', () => void close());

  process.on('message', (msg) => {
    const reply = (extra) => process.send({ type: msg.type, id: msg.id, ...extra });
    switch (msg?.type) {
      case 'configure':
        configure(msg.data).then(() => reply(), (err) => reply({ error: String(err) }));
        break;
      case 'delay':
        delay.ms = msg.data.ms;
        reply();
        break;
      case 'reset':
        for (const k of Object.keys(storeCalls)) delete storeCalls[k];
        errors = 0;
        resetRaces();
        reply();
        break;
      case 'stats':
        reply({ storeCalls: { ...storeCalls }, errors, races, metrics: proxy?.metrics() ?? null });
        break;
      case 'close':
        void close();
        break;
      default:
    }
  });
  process.send({ type: 'ready', port: await listen(gateway) });
}

// ======================================================================= main

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  if (process.argv[2] === '--child') {
    childMain(JSON.parse(process.argv[3])).catch((err) => {
      process.send?.({ type: 'failed', error: String(err?.stack ?? err) });
      process.exit(1);
    });
  } else {
    runStandalone(scenarioStoreCost);
  }
}
