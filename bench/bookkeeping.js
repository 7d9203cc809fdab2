// Scenario: the cost of the bookkeeping. Reads and updates per second through
// a gateway racing three replicas that run the worker, with the in-memory
// store and with Redis, side by side in one run.
//
// Layout (the same for both variants, so the comparison is fair): ONE child
// process holds the gateway (`redundantProxy` on node:http) and the three
// replicas (`redundantWorker` on node:http with a tiny handler; an update only
// runs `commitOnce(async () => {})`: no database, we measure the bookkeeping).
//   memory: every role shares one MemorySessionStore;
//   redis:  one ioredis client (and one RedisSessionStore) per role, against
//           a redis-server this scenario starts on a free loopback port.
// Both children stay up for the whole scenario; rounds alternate memory,
// redis, memory, redis… for reads, then for updates (each kind after its own
// warm-up); the median round is kept.
// The load (autocannon, closed loop) runs in this process.
//
// Run alone: `node bench/bookkeeping.js [--quick]` prints the results as JSON
// on stdout (progress on stderr). From bench/run.js:
//   import { scenarioBookkeeping } from './bookkeeping.js';
//   const r = await scenarioBookkeeping({ quick, dist: snapshotDir, log });

import { spawn } from 'node:child_process';
import { cannon, closer, forkChild, runStandalone, stopChild } from './child.js';
import { median } from './model.js';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const SELF = fileURLToPath(import.meta.url);
const DEFAULT_DIST = fileURLToPath(new URL('../dist/', import.meta.url));
const UPSTREAM_IDS = ['a', 'b', 'c'];
const UPDATE_BODY = JSON.stringify({ item: 42, quantity: 1, note: 'bench' });

export const BOOKKEEPING_CONFIG = {
  quick: { rounds: 2, durationSec: 1, connections: 16, warmupReads: 1500, warmupUpdates: 500 },
  full: { rounds: 5, durationSec: 3, connections: 16, warmupReads: 5000, warmupUpdates: 2500 },
};

// ====================================================================== parent

/**
 * Runs the scenario and returns a plain JSON-serialisable object.
 * @param {{ quick?: boolean, dist?: string, log?: (...m: unknown[]) => void }} [options]
 *   dist: the directory of the built library (a snapshot of dist/); default
 *   process.env.RP_BENCH_DIST, else ../dist. log: progress lines (default stderr).
 */
export async function scenarioBookkeeping({ quick = false, dist = process.env.RP_BENCH_DIST ?? DEFAULT_DIST, log = (...m) => console.error(...m) } = {}) {
  const cfg = quick ? BOOKKEEPING_CONFIG.quick : BOOKKEEPING_CONFIG.full;
  const { default: autocannon } = await import('autocannon');
  const { Pool } = await import('undici');
  const children = new Set();
  let redis = null;
  let admin = null;
  // Last resort if the process exits mid-run (Ctrl-C, a crash elsewhere).
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
    log(`bookkeeping: redis-server ${redisVersion} on 127.0.0.1:${redis.port}; ${cfg.rounds} rounds × ${cfg.durationSec} s per variant and kind, autocannon ${cfg.connections} connections`);
    const { RECORD_BATCH } = await import(pathToFileURL(`${dist.replace(/\/?$/, '/')}store/redis/batch.js`).href);
    const callCost = await redisCallCost(admin, RECORD_BATCH);
    log(`   this host: Redis CPU per PING ${callCost.lone.toFixed(1)} µs one at a time, ${callCost.pipelined.toFixed(1)} µs pipelined; a read's records ${callCost.readAlone.toFixed(1)} µs in a call of their own, ${callCost.readInEight.toFixed(1)} µs in a call with seven other reads'`);

    const secret = randomBytes(24).toString('hex');
    const nodes = {
      memory: startNode({ variant: 'memory', secret }, dist, children),
      redis: startNode({ variant: 'redis', secret, redisPort: redis.port }, dist, children),
    };
    for (const n of Object.values(nodes)) await n.ready;

    // Warm-up before the reads: reads, until the gateway has seen every
    // replica answer as a worker (before that, updates go to one upstream).
    // Warm-up before the updates: updates. The updates are measured after the
    // reads, never before them: an update stops two copies and closes their
    // connections, and reads measured right after that can stay for seconds in
    // a regime where every losing copy is stopped (see the report).
    const warm = { memory: { reads: 0, updates: 0, non2xx: 0, errors: 0 }, redis: { reads: 0, updates: 0, non2xx: 0, errors: 0 } };
    const warmUp = async (kind) => {
      for (const [variant, node] of Object.entries(nodes)) {
        const w = warm[variant];
        if (kind === 'reads') {
          const deadline = performance.now() + 30_000;
          const reads = (count) => closedLoop(Pool, node.url, { method: 'GET', path: '/read', count, concurrency: cfg.connections });
          Object.assign(w, add(w, await reads(cfg.warmupReads)));
          w.reads += cfg.warmupReads;
          for (;;) {
            const { metrics } = await node.ask('stats');
            if (UPSTREAM_IDS.every((id) => metrics.upstreams[id]?.worker === true)) break;
            if (performance.now() > deadline) throw new Error(`${variant}: the gateway did not see all three upstreams answer as workers within 30 s`);
            Object.assign(w, add(w, await reads(100)));
            w.reads += 100;
          }
          log(`   warm-up ${variant}: ${w.reads} reads; all three upstreams run the worker${w.non2xx || w.errors ? `; non-2xx ${w.non2xx}, errors ${w.errors}` : ''}`);
        } else {
          Object.assign(w, add(w, await closedLoop(Pool, node.url, { method: 'POST', path: '/update', body: UPDATE_BODY, count: cfg.warmupUpdates, concurrency: cfg.connections })));
          w.updates += cfg.warmupUpdates;
          log(`   warm-up ${variant}: ${w.updates} updates${w.non2xx || w.errors ? `; non-2xx ${w.non2xx}, errors ${w.errors}` : ''}`);
        }
      }
    };

    const kinds = [
      { kind: 'reads', method: 'GET', path: '/read' },
      { kind: 'updates', method: 'POST', path: '/update', body: UPDATE_BODY },
    ];
    const runs = { reads: { memory: [], redis: [] }, updates: { memory: [], redis: [] } };
    for (const k of kinds) {
      await warmUp(k.kind);
      for (let round = 0; round < cfg.rounds; round++) {
        for (const variant of ['memory', 'redis']) {
          const node = nodes[variant];
          await node.ask('reset');
          const cmd0 = variant === 'redis' ? await redisCommands(admin) : null;
          const cpu0 = variant === 'redis' ? redisCpuMicros(redis.process.pid) : null;
          const r = await cannon(autocannon, `${node.url}${k.path}`, { connections: cfg.connections, durationSec: cfg.durationSec, method: k.method, body: k.body });
          await sleep(100); // bookkeeping off the critical path, and cancelled losers, settle
          const stats = await node.ask('stats');
          const cmd1 = variant === 'redis' ? await redisCommands(admin) : null;
          const cpu1 = variant === 'redis' ? redisCpuMicros(redis.process.pid) : null;
          const served = r.requests.total;
          const run = {
            rps: served / r.duration,
            p50: r.latency.p50,
            p99: r.latency.p99,
            mean: r.latency.mean,
            requests: served,
            errors: r.errors + r.timeouts,
            non2xx: r.non2xx,
            statuses: Object.fromEntries(Object.entries(r.statusCodeStats ?? {}).map(([s, v]) => [s, v.count])),
            // CPU of the one process holding gateway and replicas (and store, for memory).
            nodeCpuMicrosPerRequest: served ? stats.cpuMicros / served : null,
            redisCpuMicrosPerRequest: cpu0 !== null && cpu1 !== null && served ? (cpu1 - cpu0) / served : null,
            storeCallsPerRequest: served ? perRequest(stats.storeCalls, served) : null,
            // Scripts sent by the clients (EVALSHA/EVAL), and every command Redis ran, those inside scripts included.
            redisScriptsPerRequest: cmd0 && cmd1 && served ? (cmd1.scripts - cmd0.scripts) / served : null,
            redisCommandsPerRequest: cmd0 && cmd1 && served ? (cmd1.total - cmd0.total) / served : null,
            redisCommandsByName: cmd0 && cmd1 && served ? perRequest(diffCounts(cmd1.byName, cmd0.byName), served) : null,
            copiesPerRequest: stats.races.requests ? stats.races.copiesSent / stats.races.requests : null,
            // Connections the replicas accepted from the gateway: a copy stopped before it answered costs one.
            newUpstreamConnectionsPerRequest: served ? stats.upstreamConnections / served : null,
            copyOutcomes: stats.races.copyOutcomes,
            raceOutcomes: stats.races.outcomes,
            bookkeepingErrors: stats.errors,
          };
          runs[k.kind][variant].push(run);
          log(`   ${k.kind.padEnd(7)} round ${round + 1} ${variant.padEnd(6)} ${run.rps.toFixed(0).padStart(6)} req/s  p50 ${run.p50} ms  p99 ${run.p99} ms  node CPU ${run.nodeCpuMicrosPerRequest.toFixed(0)} µs/req  new conns/req ${run.newUpstreamConnectionsPerRequest.toFixed(2)}  store calls/req ${sum(run.storeCallsPerRequest).toFixed(2)}${run.redisScriptsPerRequest !== null ? `  redis scripts/req ${run.redisScriptsPerRequest.toFixed(2)} (commands ${run.redisCommandsPerRequest.toFixed(1)}), redis CPU ${run.redisCpuMicrosPerRequest.toFixed(0)} µs/req` : ''}${run.errors || run.non2xx ? `  errors ${run.errors} non-2xx ${run.non2xx}` : ''}`);
        }
      }
    }

    const summary = (rs) => ({
      rps: median(rs.map((r) => r.rps)),
      p50: median(rs.map((r) => r.p50)),
      p99: median(rs.map((r) => r.p99)),
      errors: rs.reduce((a, r) => a + r.errors, 0),
      non2xx: rs.reduce((a, r) => a + r.non2xx, 0),
      requests: rs.reduce((a, r) => a + r.requests, 0),
      nodeCpuMicrosPerRequest: median(rs.map((r) => r.nodeCpuMicrosPerRequest)),
      redisCpuMicrosPerRequest: rs[0].redisCpuMicrosPerRequest === null ? null : median(rs.map((r) => r.redisCpuMicrosPerRequest)),
      storeCallsPerRequest: medianCounts(rs.map((r) => r.storeCallsPerRequest)),
      redisScriptsPerRequest: rs[0].redisScriptsPerRequest === null ? null : median(rs.map((r) => r.redisScriptsPerRequest)),
      redisCommandsPerRequest: rs[0].redisCommandsPerRequest === null ? null : median(rs.map((r) => r.redisCommandsPerRequest)),
      copiesPerRequest: median(rs.map((r) => r.copiesPerRequest)),
      newUpstreamConnectionsPerRequest: median(rs.map((r) => r.newUpstreamConnectionsPerRequest)),
      bookkeepingErrors: rs.reduce((a, r) => a + r.bookkeepingErrors, 0),
      rounds: rs,
    });
    const results = {};
    for (const kind of ['reads', 'updates']) for (const variant of ['memory', 'redis']) results[`${variant}-${kind}`] = { variant, kind, ...summary(runs[kind][variant]) };
    const ratios = {
      'redis/memory reads req/s': results['redis-reads'].rps / results['memory-reads'].rps,
      'redis/memory updates req/s': results['redis-updates'].rps / results['memory-updates'].rps,
      'redis/memory reads p99': results['redis-reads'].p99 / results['memory-reads'].p99,
      'redis/memory updates p99': results['redis-updates'].p99 / results['memory-updates'].p99,
      'updates/reads req/s (memory)': results['memory-updates'].rps / results['memory-reads'].rps,
      'updates/reads req/s (redis)': results['redis-updates'].rps / results['redis-reads'].rps,
    };
    for (const [name, r] of Object.entries(results)) {
      log(`   ${name.padEnd(15)} median ${r.rps.toFixed(0).padStart(6)} req/s  p50 ${r.p50} ms  p99 ${r.p99} ms  errors ${r.errors} non-2xx ${r.non2xx}`);
    }
    log(`   redis/memory: reads ${ratios['redis/memory reads req/s'].toFixed(2)}×, updates ${ratios['redis/memory updates req/s'].toFixed(2)}× req/s`);
    return {
      scenario: 'bookkeeping',
      quick,
      config: {
        ...cfg,
        layout: 'one child process: gateway (redundantProxy on node:http, 3 copies, secret) + 3 replicas (redundantWorker on node:http); load generator (autocannon) in the parent',
        readRequest: 'GET /read → 200 tiny JSON',
        updateRequest: `POST /update, JSON body of ${Buffer.byteLength(UPDATE_BODY)} bytes → commitOnce(async () => {}) → 200 tiny JSON`,
        memoryStore: 'one MemorySessionStore shared by the gateway and the three workers',
        redisStore: 'RedisSessionStore per role (gateway, a, b, c), each on its own ioredis client { maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true }',
        sessions: 'no session cookie: the proxy mints a session per request, so no session is loaded or saved',
        order: 'reads: warm-up with reads, then rounds alternating memory, redis, memory, redis…; then updates: warm-up with updates, then rounds alternating likewise; median of the rounds',
      },
      redis: { version: redisVersion, port: redis.port, callCost },
      machine: { nproc: os.cpus().length, loadavgAtStart, loadavgAtEnd: os.loadavg(), node: process.version },
      warmup: warm,
      results,
      ratios,
      durationSec: (performance.now() - started) / 1000,
    };
  } finally {
    await Promise.allSettled([...children].map((c) => stopChild(c)));
    if (admin) admin.disconnect();
    if (redis) await stopRedis(redis);
    process.off('exit', onExit);
  }
}

function add(a, b) {
  return { non2xx: a.non2xx + b.non2xx, errors: a.errors + b.errors };
}

const sum = (counts) => (counts ? Object.values(counts).reduce((a, b) => a + b, 0) : 0);

function perRequest(counts, n) {
  return Object.fromEntries(Object.entries(counts).filter(([, v]) => v).map(([k, v]) => [k, Math.round((v / n) * 1000) / 1000]));
}

function diffCounts(after, before) {
  return Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - (before[k] ?? 0)]));
}

function medianCounts(list) {
  const keys = new Set(list.flatMap((c) => Object.keys(c ?? {})));
  return Object.fromEntries([...keys].sort().map((k) => [k, median(list.map((c) => c?.[k] ?? 0))]));
}

/** Closed loop: `count` requests, `concurrency` at a time (warm-ups). */
async function closedLoop(Pool, origin, { method, path, body, count, concurrency }) {
  const pool = new Pool(origin, { connections: concurrency, pipelining: 1 });
  let next = 0;
  let non2xx = 0;
  let errors = 0;
  try {
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < count) {
          next++;
          try {
            const res = await pool.request({
              path, method, body, headers: body ? { 'content-type': 'application/json' } : undefined, headersTimeout: 10_000, bodyTimeout: 10_000,
            });
            await res.body.dump();
            if (res.statusCode < 200 || res.statusCode > 299) non2xx++;
          } catch {
            errors++;
          }
        }
      }),
    );
  } finally {
    await pool.close();
  }
  return { non2xx, errors };
}

// --------------------------------------------------------------- redis-server

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export async function startRedis(extraArgs = []) {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', os.tmpdir(), '--loglevel', 'warning', ...extraArgs.map((a) => a.replaceAll('{port}', String(port)))], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const spawnError = new Promise((_, reject) => child.once('error', reject));
  spawnError.catch(() => {}); // raced below while starting; a later error shows as the exit
  const redis = { port, process: child, exited };
  // Ready once it accepts a connection and answers PING.
  const deadline = performance.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`redis-server exited (${child.exitCode}): ${output.trim()}`);
    const ok = await Promise.race([ping(port), spawnError]);
    if (ok) return redis;
    if (performance.now() > deadline) {
      await stopRedis(redis);
      throw new Error(`redis-server did not answer on port ${port} within 10 s: ${output.trim()}`);
    }
    await sleep(50);
  }
}

function ping(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    const done = (ok) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(500, () => done(false));
    s.once('error', () => done(false));
    s.once('connect', () => s.write('PING\r\n'));
    s.once('data', (d) => done(String(d).startsWith('+PONG')));
  });
}

/**
 * A Redis Cluster of `masters` masters on loopback, no replicas: each node a
 * redis-server of its own (cluster bus on a free port), joined with
 * `redis-cli --cluster create`, ready when every node says `cluster_state:ok`.
 */
export async function startRedisCluster(masters = 3) {
  const nodes = [];
  const stop = () => Promise.allSettled(nodes.map((n) => stopRedis(n)));
  try {
    for (let i = 0; i < masters; i++) {
      const bus = await freePort();
      nodes.push(await startRedis(['--cluster-enabled', 'yes', '--cluster-config-file', `rp-bench-nodes-{port}.conf`, '--cluster-port', String(bus)]));
    }
    await runCommand('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes']);
    const deadline = performance.now() + 20_000;
    for (const n of nodes) {
      while (!(await runCommand('redis-cli', ['-p', String(n.port), 'cluster', 'info'])).includes('cluster_state:ok')) {
        if (performance.now() > deadline) throw new Error(`cluster node ${n.port} not ready within 20 s`);
        await sleep(100);
      }
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { nodes, stop };
}

function runCommand(cmd, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${out.trim()}`))));
  });
}

export async function stopRedis(redis) {
  const child = redis.process;
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  await redis.exited;
  clearTimeout(t);
}

/**
 * What a call costs Redis on this host, before any work: Redis CPU per PING
 * sent one at a time (each wakes Redis: a read, a reply, the system calls
 * around them) and per PING in pipelines of 100 (the same, shared). Then a
 * raced read's four records (three copies, one adoption; the request log's
 * script) in a call of their own, and in a call holding eight reads' records,
 * each call sent one at a time: what the records cost beside the call.
 */
export async function redisCallCost(admin, recordBatch, count = 3000) {
  for (let i = 0; i < 200; i++) await admin.ping(); // warm
  const c0 = await redisCpuInfo(admin);
  for (let i = 0; i < count; i++) await admin.ping();
  const c1 = await redisCpuInfo(admin);
  for (let i = 0; i < count; i += 100) {
    const p = admin.pipeline();
    for (let j = 0; j < 100; j++) p.ping();
    await p.exec();
  }
  const c2 = await redisCpuInfo(admin);
  // Each INFO between them is one call more: too small to matter over thousands.
  let seq = 0;
  const reads = (n) => {
    const keys = [];
    const args = ['60000'];
    for (let r = 0; r < n; r++) {
      const id = `probe-${++seq}`;
      for (let i = 0; i < 3; i++) {
        keys.push(`probe:{${id}}:request`);
        args.push('c0', id, `${id}-${i}`, JSON.stringify({ duplicateId: `${id}-${i}`, upstreamId: 'abc'[i], index: i, of: 3 }));
      }
      keys.push(`probe:{${id}}:request`);
      args.push('a0', id, JSON.stringify({ duplicateIds: [`${id}-0`], upstreamIds: ['a'] }), '');
    }
    return admin.evalsha(recordBatch.sha, keys.length, ...keys, ...args);
  };
  await admin.script('LOAD', recordBatch.lua);
  const calls = Math.floor(count / 3);
  const c3 = await redisCpuInfo(admin);
  for (let i = 0; i < calls; i++) await reads(1);
  const c4 = await redisCpuInfo(admin);
  for (let i = 0; i < calls; i++) await reads(8);
  const c5 = await redisCpuInfo(admin);
  const probes = await admin.keys('probe:*');
  for (let i = 0; i < probes.length; i += 500) await admin.del(...probes.slice(i, i + 500));
  return {
    count,
    lone: (c1 - c0) / count,
    pipelined: (c2 - c1) / count,
    calls,
    readAlone: (c4 - c3) / calls,
    readInEight: (c5 - c4) / (calls * 8),
  };
}

/** Commands Redis ran (those inside scripts included), from `INFO commandstats`. */
export async function redisCommands(admin) {
  const text = await admin.info('commandstats');
  const byName = {};
  let total = 0;
  for (const m of text.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) {
    if (m[1] === 'info') continue; // our own probes
    byName[m[1]] = Number(m[2]);
    total += Number(m[2]);
  }
  return { total, scripts: (byName.evalsha ?? 0) + (byName.eval ?? 0), byName };
}

/**
 * Wraps a store: counts calls per method into `counts` and, when `delay.ms` is
 * above 0, holds each call that long first (a stand-in for a network round
 * trip). Delegates to the real store (its private fields need `this` = the store).
 */
export function countedStore(store, counts, delay = { ms: 0 }) {
  const wrapper = {};
  let proto = store;
  while (proto && proto !== Object.prototype) {
    for (const name of Object.getOwnPropertyNames(proto)) {
      if (name === 'constructor' || name in wrapper) continue;
      const d = Object.getOwnPropertyDescriptor(proto, name);
      if (typeof d.value !== 'function') continue;
      wrapper[name] = (...args) => {
        counts[name] = (counts[name] ?? 0) + 1;
        if (delay.ms > 0 && name !== 'close') return sleep(delay.ms).then(() => store[name](...args));
        return store[name](...args);
      };
    }
    proto = Object.getPrototypeOf(proto);
  }
  return wrapper;
}

/** user + system CPU of redis-server in µs, from `INFO cpu` (getrusage: microseconds, where /proc counts 10 ms ticks). */
export async function redisCpuInfo(admin) {
  const text = await admin.info('cpu');
  const get = (name) => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(text)?.[1] ?? NaN);
  return Math.round((get('used_cpu_sys') + get('used_cpu_user')) * 1e6);
}

/** user + system CPU of redis-server, from /proc (Linux); null elsewhere. */
export function redisCpuMicros(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // utime and stime are fields 14 and 15 of the line (11 and 12 after the name), in clock ticks.
    return ((Number(fields[11]) + Number(fields[12])) * 1e6) / 100;
  } catch {
    return null;
  }
}

// --------------------------------------------------------------- child control

function startNode(config, dist, children) {
  const node = forkChild(SELF, ['--child', JSON.stringify(config)], { name: `bookkeeping ${config.variant}`, dist, children });
  node.url = null;
  node.ready = node.ready.then((m) => {
    node.url = `http://127.0.0.1:${m.port}`;
    return m;
  });
  node.ready.catch(() => {});
  return node;
}

// ======================================================================= child

async function childMain(config) {
  const dist = process.env.RP_BENCH_DIST ?? DEFAULT_DIST;
  let lib;
  try {
    lib = await import(pathToFileURL(`${dist.replace(/\/?$/, '/')}index.js`).href);
  } catch (err) {
    process.send({ type: 'failed', error: String(err?.stack ?? err) });
    process.exit(1);
  }
  const { variant, secret } = config;
  const storeCalls = {};
  const clients = [];
  const stores = [];
  const servers = [];
  let proxy = null;
  let errors = 0;
  let upstreamConnections = 0;
  let cpuStart = process.cpuUsage();
  let races;
  const resetRaces = () => (races = { requests: 0, copiesSent: 0, outcomes: {}, copyOutcomes: {} });
  resetRaces();

  const counted = (store) => countedStore(store, storeCalls);

  let shared = null;
  async function storeFor(role) {
    if (variant === 'memory') {
      if (!shared) {
        const real = new lib.MemorySessionStore();
        stores.push(real);
        shared = counted(real);
      }
      return shared;
    }
    const { Redis } = await import('ioredis');
    const { RedisSessionStore } = await import(pathToFileURL(`${dist.replace(/\/?$/, '/')}redis.js`).href);
    const client = new Redis({ host: '127.0.0.1', port: config.redisPort, maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true, connectionName: `rp-bench-${role}` });
    client.on('error', () => {});
    clients.push(client);
    await client.connect();
    const real = new RedisSessionStore({ client, prefix: 'rpbench:' });
    stores.push(real);
    return counted(real);
  }

  const close = closer(() => proxy, servers, stores, clients);
  process.on('disconnect', () => void close());

  const listen = (server) =>
    new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve(server.address().port));
    });

  try {
    const upstreams = [];
    for (const id of UPSTREAM_IDS) {
      const worker = lib.redundantWorker({ id, store: await storeFor(id), secret });
      worker.on('error', () => errors++);
      const readBody = Buffer.from(JSON.stringify({ ok: true, upstream: id }));
      const server = http.createServer((req, res) => {
        const fail = (err) => {
          if (res.headersSent || res.destroyed) return void res.destroy();
          res.writeHead(500, { 'content-type': 'text/plain' });
          res.end(String(err?.message ?? err));
        };
        worker(req, res, (err) => {
          if (err) return worker.errorHandler(err, req, res, fail);
          if (req.method === 'GET') {
            res.writeHead(200, { 'content-type': 'application/json', 'content-length': readBody.length });
            res.end(readBody);
            return;
          }
          const chunks = [];
          req.on('data', (c) => chunks.push(c));
          req.on('end', () => {
            let order;
            try {
              order = JSON.parse(Buffer.concat(chunks).toString() || '{}');
            } catch (e) {
              return worker.errorHandler(e, req, res, fail);
            }
            req.redundant.commitOnce(async (fence) => fence).then(
              (fence) => {
                const out = JSON.stringify({ ok: true, upstream: id, item: order.item ?? null, fence });
                res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out) });
                res.end(out);
              },
              (e) => worker.errorHandler(e, req, res, fail),
            );
          });
        });
      });
      server.keepAliveTimeout = 30_000;
      server.on('connection', () => upstreamConnections++);
      servers.push(server);
      upstreams.push({ id, url: `http://127.0.0.1:${await listen(server)}` });
    }
    proxy = lib.redundantProxy({ upstreams, store: await storeFor('gateway'), secret });
    proxy.on('error', () => errors++);
    proxy.on('race:end', (report) => {
      races.requests++;
      races.outcomes[report.outcome] = (races.outcomes[report.outcome] ?? 0) + 1;
      for (const c of report.copies) {
        races.copyOutcomes[c.outcome] = (races.copyOutcomes[c.outcome] ?? 0) + 1;
        if (c.sentAt !== null) races.copiesSent++;
      }
    });
    const gateway = http.createServer(proxy.handler);
    gateway.keepAliveTimeout = 30_000;
    servers.push(gateway);
    const port = await listen(gateway);
    process.send({ type: 'ready', port });
  } catch (err) {
    process.send({ type: 'failed', error: String(err?.stack ?? err) });
    await close();
    return;
  }

  process.on('message', (msg) => {
    switch (msg?.type) {
      case 'reset':
        for (const k of Object.keys(storeCalls)) delete storeCalls[k];
        errors = 0;
        upstreamConnections = 0;
        resetRaces();
        cpuStart = process.cpuUsage();
        process.send({ type: 'reset', id: msg.id });
        break;
      case 'stats': {
        const cpu = process.cpuUsage(cpuStart);
        process.send({ type: 'stats', id: msg.id, storeCalls: { ...storeCalls }, errors, upstreamConnections, races, cpuMicros: cpu.user + cpu.system, metrics: proxy.metrics() });
        break;
      }
      case 'close':
        void close();
        break;
      default:
    }
  });
}

// ======================================================================= main

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  if (process.argv[2] === '--child') {
    await childMain(JSON.parse(process.argv[3]));
  } else {
    runStandalone(scenarioBookkeeping);
  }
}
