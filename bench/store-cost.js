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

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import os from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { countedStore, redisCommands, redisCpuInfo, startRedis, startRedisCluster, stopRedis } from './bookkeeping.js';
import { closer, forkChild, runStandalone, stopChild } from './child.js';
import { median } from './model.js';

const SELF = fileURLToPath(import.meta.url);
const DEFAULT_DIST = fileURLToPath(new URL('../dist/', import.meta.url));
const UPSTREAM_IDS = ['a', 'b', 'c', 'd', 'e'];

export const STORE_COST_CONFIG = {
  quick: { copies: [3], count: 150, concurrency: 8, delayMs: 20, latencyRequests: 9, spreadRequests: 4000, spreadSeconds: 30, saturationSeconds: 3, saturationRounds: 1 },
  full: { copies: [2, 3, 5], count: 600, concurrency: 8, delayMs: 20, latencyRequests: 25, spreadRequests: 100_000, spreadSeconds: 240, saturationSeconds: 5, saturationRounds: 3 },
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
  const { Redis } = await import('ioredis');
  const children = new Set();
  const servers = []; // every redis-server started here
  const admins = [];
  const onExit = () => {
    for (const c of children) c.kill('SIGKILL');
    for (const r of servers) r.process.kill('SIGKILL');
  };
  process.on('exit', onExit);
  const started = performance.now();
  const loadavgAtStart = os.loadavg();
  const adminOf = async (port) => {
    const admin = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true });
    admin.on('error', () => {});
    admins.push(admin);
    await admin.connect();
    return admin;
  };
  try {
    const single = await startRedis();
    servers.push(single);
    const cluster = await startRedisCluster(3);
    servers.push(...cluster.nodes);
    const backends = {
      memory: { admins: [], child: {} },
      redis: { admins: [await adminOf(single.port)], child: { redisPort: single.port } },
      cluster: { admins: await Promise.all(cluster.nodes.map((n) => adminOf(n.port))), child: { clusterPorts: cluster.nodes.map((n) => n.port) } },
    };
    const redisVersion = (await backends.redis.admins[0].info('server')).match(/redis_version:(\S+)/)?.[1] ?? null;
    log(`store cost: redis-server ${redisVersion} on 127.0.0.1:${single.port}, and a cluster of 3 masters (${cluster.nodes.map((n) => n.port).join(', ')}); copies ${cfg.copies.join(', ')}; ${cfg.count} requests per cell (${cfg.concurrency} at a time), critical path from ${cfg.latencyRequests} sequential requests with and without a ${cfg.delayMs} ms delay on every store call`);
    const snapshot = async (admins) => Promise.all(admins.map(async (a) => ({ cmd: await redisCommands(a), cpu: await redisCpuInfo(a), keys: await a.dbsize() })));
    const secret = randomBytes(24).toString('hex');
    const results = { memory: {}, redis: {}, cluster: {} };
    let spread = null;
    let saturation = null;
    let clusterSaturation = null;
    let instructions = null;
    for (const variant of ['memory', 'redis', 'cluster']) {
      const backend = backends[variant];
      const node = forkChild(SELF, ['--child', JSON.stringify({ variant, secret, ...backend.child })], { name: `store-cost ${variant}`, dist, children });
      const { port } = await node.ready;
      const origin = `http://127.0.0.1:${port}`;
      try {
        for (const copies of variant === 'cluster' ? [3] : cfg.copies) {
          await node.ask('configure', { copies });
          await warmUp(Pool, origin, node, copies);
          const cells = {};
          for (const k of KINDS) {
            // Counts and CPU: a closed loop, its clients' sessions made before the counting starts.
            const loopClients = await Promise.all(Array.from({ length: cfg.concurrency }, () => sessionFor(Pool, origin, k)));
            await sleep(100);
            await node.ask('reset');
            const before = await snapshot(backend.admins);
            const load = await closedLoop(loopClients, k, cfg.count);
            await sleep(300); // bookkeeping off the critical path and stopped losers settle
            await Promise.all(loopClients.map((c) => c.close()));
            const after = await snapshot(backend.admins);
            const stats = await node.ask('stats');
            const n = load.ok;
            const cell = {
              requests: n,
              failed: load.failed,
              statuses: load.statuses,
              storeCallsPerRequest: perRequest(stats.storeCalls, n),
              storeCallsTotalPerRequest: round(sum(stats.storeCalls) / n),
              ...(await criticalPath(Pool, origin, node, k, cfg)),
              copiesPerRequest: stats.races.requests ? round(stats.races.copiesSent / stats.races.requests) : null,
              raceOutcomes: stats.races.outcomes,
              bookkeepingErrors: stats.errors,
            };
            if (backend.admins.length) Object.assign(cell, redisCost(before, after, n));
            cells[k.kind] = cell;
            log(
              `   ${variant.padEnd(7)} copies ${copies}  ${k.kind.padEnd(14)} store calls/req ${cell.storeCallsTotalPerRequest.toFixed(2).padStart(5)}  critical-path round trips ${cell.criticalPathRoundTrips.toFixed(1)}` +
                (cell.redisCommandsPerRequest !== undefined ? `  redis scripts/req ${cell.redisScriptsPerRequest.toFixed(2)}, commands/req ${cell.redisCommandsPerRequest.toFixed(1)}, CPU ${cell.redisCpuMicrosPerRequest.toFixed(0)} µs/req` : '') +
                (cell.failed || cell.bookkeepingErrors ? `  FAILED ${cell.failed}, bookkeeping errors ${cell.bookkeepingErrors}` : ''),
            );
          }
          results[variant][copies] = cells;
        }
        if (variant === 'cluster') spread = await clusterSpread(Pool, origin, node, backend.admins, cfg, log);
        if (variant === 'redis') saturation = await saturate(node, backend.admins, cfg, log);
        if (variant === 'redis') instructions = await countInstructions(dist, cfg, log);
        if (variant === 'cluster') clusterSaturation = await saturate(node, backend.admins, cfg, log, ' on Cluster (CPU of the 3 shards added up)');
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
        layout: 'one child process per store: gateway (redundantProxy on node:http, secret) + 5 replicas (redundantWorker on node:http, ids a–e); memory: one MemorySessionStore shared by all; redis: one ioredis client and RedisSessionStore per role; cluster: the same on an ioredis Cluster client per role, 3 masters, no replicas',
        handlers: 'read: 200 tiny JSON; session update: session.data.n += 1; update: commitOnce(async (fence) => fence); keyed update: the same with a fresh Idempotency-Key',
      },
      redis: { version: redisVersion, port: single.port, clusterPorts: cluster.nodes.map((n) => n.port) },
      machine: { nproc: os.cpus().length, loadavgAtStart, loadavgAtEnd: os.loadavg(), node: process.version },
      results,
      spread,
      saturation,
      clusterSaturation,
      instructions,
      durationSec: (performance.now() - started) / 1000,
    };
  } finally {
    await Promise.allSettled([...children].map((c) => stopChild(c)));
    for (const a of admins) a.disconnect();
    await Promise.allSettled(servers.map((r) => stopRedis(r)));
    process.off('exit', onExit);
  }
}

/** Round trips on the critical path: sequential requests, alternating without and with a delay on every store call. */
async function criticalPath(Pool, origin, node, k, cfg) {
  const plain = [];
  const delayed = [];
  const client = await sessionFor(Pool, origin, k);
  try {
    for (let i = 0; i < cfg.latencyRequests; i++) {
      await node.ask('delay', { ms: 0 });
      plain.push(await timed(client, k));
      await node.ask('delay', { ms: cfg.delayMs });
      delayed.push(await timed(client, k));
    }
  } finally {
    await node.ask('delay', { ms: 0 });
    await client.close();
  }
  return {
    criticalPathRoundTrips: round((median(delayed) - median(plain)) / cfg.delayMs, 1),
    p50Ms: round(median(plain), 2),
    p50DelayedMs: round(median(delayed), 2),
  };
}

/** Scripts, commands and CPU per request, summed over the nodes, from two snapshots. */
function redisCost(before, after, n) {
  const total = (snap, f) => snap.reduce((a, x) => a + f(x), 0);
  return {
    redisScriptsPerRequest: round((total(after, (x) => x.cmd.scripts) - total(before, (x) => x.cmd.scripts)) / n),
    redisCommandsPerRequest: round((total(after, (x) => x.cmd.total) - total(before, (x) => x.cmd.total)) / n, 1),
    redisCpuMicrosPerRequest: round((total(after, (x) => x.cpu) - total(before, (x) => x.cpu)) / n, 1),
  };
}

/**
 * Measured points for the capacity model: the store traffic of raced reads
 * and of committed updates, made by the child as fast as Redis takes it, for
 * a few seconds each: requests per second, the share of one core Redis used,
 * and its CPU per request under that load (batches are larger there than at
 * the light load of the cells).
 */
async function saturate(node, admins, cfg, log, label = '') {
  const out = {};
  for (const kind of ['read', 'update']) {
    // Several rounds, the median one kept: one round moves with the host's other work.
    const rounds = [];
    for (let r = 0; r < cfg.saturationRounds; r++) {
      // On Cluster: every shard's CPU and commands, added up.
      const cpuOf = async () => (await Promise.all(admins.map((a) => redisCpuInfo(a)))).reduce((x, y) => x + y, 0);
      const commandsOf = async () => {
        const byName = {};
        for (const c of await Promise.all(admins.map((a) => redisCommands(a)))) for (const [name, n] of Object.entries(c.byName)) byName[name] = (byName[name] ?? 0) + n;
        return byName;
      };
      const cpu0 = await cpuOf();
      const cmd0 = await commandsOf();
      const t0 = performance.now();
      const { requests, failed } = (await node.ask('saturate', { kind, seconds: cfg.saturationSeconds })).result;
      const seconds = (performance.now() - t0) / 1000;
      const cpuMicros = (await cpuOf()) - cpu0;
      const cmd1 = await commandsOf();
      const commands = {};
      for (const [name, calls] of Object.entries(cmd1)) {
        const n = calls - (cmd0[name] ?? 0);
        if (n > 0) commands[name] = round2(n / requests);
      }
      rounds.push({
        requests,
        failed,
        seconds: round(seconds, 2),
        requestsPerSecond: round(requests / seconds, 0),
        redisCoreShare: round(cpuMicros / (seconds * 1e6), 3),
        redisCpuMicrosPerRequest: round(cpuMicros / requests, 1),
        commandsPerRequest: commands,
      });
    }
    const sorted = [...rounds].sort((a, b) => a.redisCpuMicrosPerRequest - b.redisCpuMicrosPerRequest);
    const point = { ...sorted[Math.floor((sorted.length - 1) / 2)], rounds: rounds.map((r) => r.redisCpuMicrosPerRequest) };
    out[kind] = point;
    log(`   saturation${label}, ${kind}s' store traffic (copies 3, direct store calls, 64 at a time; median of ${rounds.length}): ${point.requestsPerSecond} ${kind}s/s, Redis at ${(point.redisCoreShare * 100).toFixed(0)}% of a core, ${point.redisCpuMicrosPerRequest} µs per ${kind} (rounds: ${point.rounds.join(', ')})${point.failed ? `, ${point.failed} failed` : ''}`);
  }
  return out;
}

const round2 = (x) => Math.round(x * 100) / 100;

/**
 * Redis's own work per raced read and per committed update, in instructions
 * (bench/saturation.mjs --instructions: the same store traffic as `saturate`,
 * against a redis-server under valgrind's callgrind). Unlike its CPU time on a
 * shared host, the count moves little from run to run. null without valgrind.
 */
async function countInstructions(dist, cfg, log) {
  const run = (args) =>
    new Promise((resolve) => execFile(args[0], args.slice(1), { timeout: 120_000 }, (err, stdout) => resolve(err ? null : stdout)));
  if ((await run(['valgrind', '--version'])) === null) {
    log('   instructions: valgrind is not installed, skipped');
    return null;
  }
  const out = {};
  for (const kind of ['read', 'update']) {
    const stdout = await run([process.execPath, fileURLToPath(new URL('./saturation.mjs', import.meta.url)), '--dist', dist, '--instructions', '--seconds', String(cfg.saturationSeconds), kind]);
    const m = stdout && /: (\d+) requests, (\d+) failed; Redis executed ([\d,]+) instructions per/.exec(stdout);
    if (!m) {
      log(`   instructions, ${kind}: bench/saturation.mjs --instructions gave no figure`);
      return null;
    }
    out[kind] = { requests: Number(m[1]), failed: Number(m[2]), instructionsPerRequest: Number(m[3].replaceAll(',', '')) };
    log(`   instructions, ${kind}s' store traffic (copies 3, callgrind): ${m[3]} Redis instructions per ${kind} over ${m[1]} ${kind}s`);
  }
  return out;
}

/**
 * On the cluster: reads and updates with sessions (alternating batches), then keys,
 * commands and CPU per shard, and whether every request's keys live on one shard.
 */
async function clusterSpread(Pool, origin, node, admins, cfg, log) {
  const before = await Promise.all(admins.map(async (a) => ({ cmd: await redisCommands(a), cpu: await redisCpuInfo(a), keys: await a.dbsize() })));
  const t0 = performance.now();
  let done = 0;
  let failed = 0;
  // Many sessions, as in a deployment: 16 clients, each with a new session every 25 requests.
  const deadline = performance.now() + cfg.spreadSeconds * 1000;
  for (let batch = 0; done + failed < cfg.spreadRequests && performance.now() < deadline; batch++) {
    const k = batch % 2 === 0 ? KINDS[1] : KINDS[3];
    const clients = await Promise.all(Array.from({ length: 16 }, () => sessionFor(Pool, origin, k)));
    const r = await closedLoop(clients, k, Math.min(16 * 25, cfg.spreadRequests - done - failed), deadline - performance.now());
    await Promise.all(clients.map((c) => c.close()));
    done += r.ok;
    failed += r.failed;
  }
  await sleep(300);
  const after = await Promise.all(admins.map(async (a) => ({ cmd: await redisCommands(a), cpu: await redisCpuInfo(a), keys: await a.dbsize() })));
  const shards = admins.map((a, i) => ({
    port: a.options.port,
    keys: after[i].keys - before[i].keys,
    commands: after[i].cmd.total - before[i].cmd.total,
    cpuMicros: after[i].cpu - before[i].cpu,
  }));
  const spreadOf = (f) => {
    const xs = shards.map(f);
    const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
    return { mean: round(mean, 1), maxDeviation: round(Math.max(...xs.map((x) => Math.abs(x - mean) / mean)), 3) };
  };
  // Every request's keys on one shard: the hash tags `{r:<id>}` seen on more than one node.
  const nodeOfTag = new Map();
  let tagsOnManyNodes = 0;
  for (const [i, a] of admins.entries()) {
    let cursor = '0';
    let scanned = 0;
    do {
      const [next, keys] = await a.scan(cursor, 'MATCH', 'rpcost:*', 'COUNT', 1000);
      cursor = next;
      for (const key of keys) {
        const tag = /\{(r:[^}]*)\}/.exec(key)?.[1];
        if (!tag) continue;
        const seen = nodeOfTag.get(tag);
        if (seen === undefined) nodeOfTag.set(tag, i);
        else if (seen !== i) tagsOnManyNodes++;
      }
      scanned += keys.length;
    } while (cursor !== '0' && scanned < 200_000);
  }
  const out = {
    requests: done,
    failed,
    seconds: round((performance.now() - t0) / 1000, 1),
    shards,
    keys: spreadOf((s) => s.keys),
    commands: spreadOf((s) => s.commands),
    cpu: spreadOf((s) => s.cpuMicros),
    requestTagsChecked: nodeOfTag.size,
    requestTagsOnMoreThanOneShard: tagsOnManyNodes,
  };
  log(`   cluster spread: ${done} requests (${failed} failed) in ${out.seconds} s; keys per shard ${shards.map((s) => s.keys).join(' / ')} (max deviation ${(out.keys.maxDeviation * 100).toFixed(1)}%), commands ${shards.map((s) => s.commands).join(' / ')} (${(out.commands.maxDeviation * 100).toFixed(1)}%), CPU µs ${shards.map((s) => s.cpuMicros).join(' / ')} (${(out.cpu.maxDeviation * 100).toFixed(1)}%); ${nodeOfTag.size} request tags, ${tagsOnManyNodes} on more than one shard`);
  return out;
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

/** `count` requests of kind `k`, one at a time per client, for at most `maxMs`. */
async function closedLoop(clients, k, count, maxMs = 60_000) {
  const deadline = performance.now() + maxMs;
  let next = 0;
  let ok = 0;
  let failed = 0;
  const statuses = {};
  await Promise.all(
    clients.map(async (client) => {
      while (next < count && performance.now() < deadline) {
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

/**
 * One kind's store traffic only, 64 at a time, for `seconds`, as three
 * replicas' stores and the gateway's make it (`stores`: three replicas', then
 * the gateway's): a read records three copies and one adoption; an update
 * records three copies (awaited, as a worker does), claims from all three
 * (one is granted and confirms, the others wait and learn they lost) and
 * records the adoption. Every call makes requests of its own: a request id
 * met again would find its records and its commit already there.
 * Also used by bench/saturation.mjs. With `rate`, requests start one at a
 * time, `rate` a second spread evenly (as from many clients at light load),
 * instead of 64 at a time as fast as they go.
 */
export async function storeTraffic(lib, stores, kind, seconds, rate = 0) {
  const update = kind === 'update';
  const deadline = performance.now() + seconds * 1000;
  let done = 0;
  let failed = 0;
  let n = 0;
  const round = randomBytes(6).toString('hex');
  const one = async (requestId) => {
    const sessionId = `s-${requestId}`;
    const dup = (i) => `${requestId}.${i}`;
    await Promise.all([0, 1, 2].map((i) => stores[i].recordCopy({ requestId, duplicateId: dup(i), upstreamId: UPSTREAM_IDS[i], index: i + 1, of: 3, update, sessionId })));
    if (update) {
      await Promise.all(
        [0, 1, 2].map(async (i) => {
          try {
            const grant = await stores[i].claim(requestId, dup(i), { leaseMs: 10_000 });
            await stores[i].confirm(requestId, dup(i), grant.fence);
          } catch (err) {
            if (!lib.isSupersededError(err)) throw err;
          }
        }),
      );
    }
    await stores[3].recordAdoption({ requestId, sessionId, update, duplicateIds: [dup(0)], upstreamIds: ['a'], sessionChanged: false });
  };
  const counted = (requestId) =>
    one(requestId).then(
      () => void done++,
      () => void failed++,
    );
  if (rate > 0) {
    const started = [];
    for (let next = performance.now(); next < deadline; next += 1000 / rate) {
      const wait = next - performance.now();
      if (wait > 1) await new Promise((r) => setTimeout(r, wait));
      started.push(counted(`sat-${kind}-${round}-${n++}`));
    }
    await Promise.all(started);
    return { requests: done, failed };
  }
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      while (performance.now() < deadline) await counted(`sat-${kind}-${round}-${n++}`);
    }),
  );
  return { requests: done, failed };
}

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
    const { Redis, Cluster } = await import('ioredis');
    const { RedisSessionStore } = await import(pathToFileURL(`${dist.replace(/\/?$/, '/')}redis.js`).href);
    const options = { maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true, connectionName: `rp-cost-${role}` };
    const client =
      variant === 'cluster'
        ? new Cluster(
            config.clusterPorts.map((port) => ({ host: '127.0.0.1', port })),
            { lazyConnect: true, enableOfflineQueue: false, redisOptions: options },
          )
        : new Redis({ host: '127.0.0.1', port: config.redisPort, ...options });
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

  /**
   * One kind's store traffic only, 64 at a time, for `seconds`, as three
   * replicas' stores and the gateway's make it: a read records three copies
   * and one adoption; an update records three copies (awaited, as a worker
   * does), claims from all three (one is granted and confirms, the others
   * wait and learn they lost) and records the adoption.
   */
  async function saturateStores(kind, seconds) {
    const roles = [await storeFor(`sat-a-${kind}`), await storeFor(`sat-b-${kind}`), await storeFor(`sat-c-${kind}`), await storeFor(`sat-gw-${kind}`)];
    return storeTraffic(lib, roles, kind, seconds);
  }

  const close = closer(() => proxy, servers, stores, clients);
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
      case 'saturate':
        saturateStores(msg.data.kind, msg.data.seconds).then((result) => reply({ result }), (err) => reply({ error: String(err) }));
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
