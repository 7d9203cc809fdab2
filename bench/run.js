// redundant-proxy benchmarks. `npm run bench` (a few minutes) or
// `npm run bench -- --quick` (under a minute). Everything runs on loopback;
// every load is bounded in count and time. Upstreams and gateways each run in
// their own child process (bench/upstream.js, bench/gateway.js); only one
// gateway is alive at a time. The load generators run in this process.
//
//   a. overhead: one fast upstream, copies: 1, closed-loop autocannon,
//      contestants alternated round by round, median of the rounds kept;
//   b. tail: three upstreams with the seeded heavy-tailed latency of
//      bench/model.js, open-loop load at a fixed rate, each request timed
//      from its scheduled send (no coordinated omission);
//   c. cost of copies: copies 1, 2, 3 on three fast upstreams;
//   d. bookkeeping: reads and updates per second through replicas running the
//      worker, with the in-memory store and with Redis (bench/bookkeeping.js);
//   e. memory: 200 000 raced requests, heap and sockets (bench/memory.js);
//   f. store cost: store calls, Redis commands, Redis CPU and critical-path
//      round trips per request, by kind of request and copies 2, 3, 5, for
//      both stores (bench/store-cost.js).
//
// Writes bench/results/latest.json, docs/benchmarks.md, docs/latency-cdf.svg.
// Options: --quick; --only=a,b,c,d,e,f (a partial run writes its JSON to
// bench/results/partial.json.tmp and leaves the docs alone); --contestants=x,y
// (only these contestants of a, b and c: a partial run); --prof (V8 CPU
// profiles of the gateways, for digging).

import { execSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import autocannon from 'autocannon';
import { Pool } from 'undici';
import { scenarioBookkeeping } from './bookkeeping.js';
import { cannon, forkChild, stopChild } from './child.js';
import { scenarioMemory } from './memory.js';
import { scenarioStoreCost } from './store-cost.js';
import { median, SEEDS, simulate, summarize, FAST, SLOW } from './model.js';
import { writeReport } from './report.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const onlyArg = args.find((a) => a.startsWith('--only='));
const ALL = ['a', 'b', 'c', 'd', 'e', 'f'];
const only = onlyArg ? new Set(onlyArg.slice(7).split(',')) : new Set(ALL);
for (const s of only) if (!ALL.includes(s)) throw new Error(`--only: unknown scenario "${s}" (known: ${ALL.join(', ')})`);
// --contestants=racing,ref-drain: run only these contestants (a partial run, for digging).
const pickArg = args.find((a) => a.startsWith('--contestants='));
const picked = pickArg ? new Set(pickArg.slice(14).split(',')) : null;
const pick = (list) => (picked ? list.filter((c) => picked.has(c.name)) : list);

// autocannon runs for whole seconds (a shorter duration still takes 1 s), so
// warm-ups are a fixed number of requests instead.
const CFG = quick
  ? {
      a: { rounds: 1, warmupRequests: 1500, durationSec: 1, connections: 32 },
      b: { rate: 200, requests: 400, warmup: 150, hedgeDelay: 4 },
      c: { rounds: 1, warmupRequests: 1500, durationSec: 1, connections: 32 },
    }
  : {
      a: { rounds: 4, warmupRequests: 10000, durationSec: 3, connections: 32 },
      b: { rate: 200, requests: 3500, warmup: 5000, hedgeDelay: 3 },
      c: { rounds: 3, warmupRequests: 10000, durationSec: 3, connections: 32 },
    };

const started = Date.now();
const log = (...m) => console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s]`, ...m);

// ---------------------------------------------------------------- library snapshot

// Other people rebuild dist/ while a run may last minutes: the gateways load a
// copy of dist/ taken at the start (under bench/results/, git-ignored as *.tmp),
// so that every contestant of a run measures the same build.
const distDir = fileURLToPath(new URL('../dist/', import.meta.url));
const snapshotDir = fileURLToPath(new URL(`./results/dist-${process.pid}.tmp/`, import.meta.url));

function snapshotDist() {
  cpSync(distDir, snapshotDir, { recursive: true });
  const hash = createHash('sha256');
  for (const f of readdirSync(snapshotDir, { recursive: true }).filter((f) => String(f).endsWith('.js')).sort()) {
    hash.update(String(f)).update(readFileSync(snapshotDir + f));
  }
  return hash.digest('hex').slice(0, 16);
}

function libraryVersion() {
  const git = (cmd) => {
    try {
      return execSync(`git ${cmd}`, { cwd: fileURLToPath(new URL('..', import.meta.url)), stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
    } catch {
      return null;
    }
  };
  // Porcelain lines are "XY path": keep the leading blank, so no trim here.
  let dirty = '';
  try {
    dirty = execSync('git status --porcelain -- lib', { cwd: fileURLToPath(new URL('..', import.meta.url)), stdio: ['ignore', 'pipe', 'ignore'] }).toString();
  } catch {}
  return {
    commit: git('rev-parse --short HEAD'),
    uncommittedLibFiles: dirty.split('\n').filter(Boolean).map((l) => l.slice(3)),
    distSha256: snapshotDist(),
  };
}

// ---------------------------------------------------------------- children

const children = new Set();

function spawn(file, config) {
  // --prof: V8 CPU profiles of the gateways in /tmp/redundant-proxy-prof (for digging, not for figures).
  const execArgv = args.includes('--prof') && file.includes('gateway') ? ['--cpu-prof', '--cpu-prof-dir=/tmp/redundant-proxy-prof'] : [];
  const handle = forkChild(fileURLToPath(new URL(file, import.meta.url)), [JSON.stringify(config)], { name: file, dist: snapshotDir, children, execArgv });
  handle.stop = () => stopChild(handle.child);
  return handle;
}

async function startUpstreams(ids, model) {
  const u = spawn('./upstream.js', { servers: ids.map((id) => ({ id, seed: SEEDS[id] })), model });
  const { ports } = await u.ready;
  u.urls = ids.map((id) => ({ id, url: `http://127.0.0.1:${ports[id]}` }));
  return u;
}

async function startGateway(kind, upstreams, options) {
  const g = spawn('./gateway.js', { kind, upstreams, options });
  const { port } = await g.ready;
  g.url = `http://127.0.0.1:${port}`;
  return g;
}

// ---------------------------------------------------------------- load

/** The median over the rounds `rs` of each field in `keys`. */
const medianOf = (rs, keys) => Object.fromEntries(keys.map((k) => [k, median(rs.map((r) => r[k]))]));


/** Closed-loop warm-up: `count` requests, `concurrency` at a time. */
async function warm(origin, path, count, concurrency = 10) {
  const pool = new Pool(origin, { connections: concurrency });
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) {
        next++;
        const { body } = await pool.request({ path, method: 'GET' });
        await body.dump();
      }
    }),
  );
  await pool.close();
}

/**
 * Open-loop load: request i is scheduled at t0 + i / rate and sent then,
 * whether or not earlier requests have answered, so a slow answer never
 * delays the sending or the measurement of the next ones (no coordinated
 * omission). Each request is timed from its own send to the end of its body;
 * the same requests timed from their scheduled instant are kept too: the
 * difference is this generator's timer lateness (the send lag), which no
 * contestant causes.
 */
async function openLoop(origin, path, { rate, requests }) {
  const pool = new Pool(origin, { connections: 256, pipelining: 1 });
  const latencies = new Float64Array(requests);
  const fromSchedule = new Float64Array(requests);
  const lags = new Float64Array(requests);
  const statuses = {};
  let errors = 0;
  let done = 0;
  const interval = 1000 / rate;
  const t0 = performance.now() + 20;
  let resolveAll;
  const all = new Promise((r) => (resolveAll = r));
  const fire = (i) => {
    const scheduled = t0 + i * interval;
    const sent = performance.now();
    lags[i] = sent - scheduled;
    const end = () => {
      const now = performance.now();
      latencies[i] = now - sent;
      fromSchedule[i] = now - scheduled;
      if (++done === requests) resolveAll();
    };
    pool.request({ path, method: 'GET', headersTimeout: 10_000, bodyTimeout: 10_000 }).then(
      async ({ statusCode, body }) => {
        await body.dump();
        statuses[statusCode] = (statuses[statusCode] ?? 0) + 1;
        end();
      },
      () => {
        errors++;
        end();
      },
    );
  };
  let next = 0;
  const tick = () => {
    const now = performance.now();
    while (next < requests && t0 + next * interval <= now) fire(next++);
    if (next < requests) setTimeout(tick, Math.max(0, t0 + next * interval - performance.now()));
  };
  setTimeout(tick, 20);
  const guard = setTimeout(() => resolveAll(), (requests / rate) * 1000 + 20_000);
  await all;
  clearTimeout(guard);
  await pool.close();
  return { latencies: Array.from(latencies), fromSchedule: summarize(fromSchedule), lag: summarize(lags), statuses, errors };
}

// ---------------------------------------------------------------- scenario a

async function scenarioA() {
  const cfg = CFG.a;
  log(`a. overhead: 1 fast upstream, copies: 1, autocannon ${cfg.connections} connections, ${cfg.rounds} rounds × ${cfg.durationSec} s per contestant`);
  const up = await startUpstreams(['a'], 'fast');
  const upstreams = up.urls;
  let contestants = [
    { name: 'direct', label: 'direct to the upstream (no gateway)' },
    { name: 'ours-koa', label: 'redundant-proxy in Koa', kind: 'ours-koa', options: { copies: 1 } },
    { name: 'ours-express', label: 'redundant-proxy in Express', kind: 'ours-express', options: { copies: 1 } },
    { name: 'ours-node', label: 'redundant-proxy on node:http (.handler)', kind: 'ours-node', options: { copies: 1 } },
    { name: 'hpm-express', label: 'http-proxy-middleware 3 in Express 5 (keep-alive agent)', kind: 'hpm-express' },
    { name: 'fastify-http-proxy', label: '@fastify/http-proxy 11 on fastify 5', kind: 'fastify-http-proxy' },
    // A reference point, not a proxy: what Express 5 costs before any middleware runs.
    { name: 'express-alone', label: 'Express 5 answering by itself, no proxying (reference)', kind: 'express-alone' },
  ];
  contestants = pick(contestants);
  const runs = Object.fromEntries(contestants.map((c) => [c.name, []]));
  for (let round = 0; round < cfg.rounds; round++) {
    // Rotate the order each round so that drift hits every contestant alike.
    const order = contestants.map((_, i) => contestants[(i + round) % contestants.length]);
    for (const c of order) {
      const gw = c.kind ? await startGateway(c.kind, upstreams, c.options) : null;
      const url = `${gw ? gw.url : upstreams[0].url}/json`;
      await warm(gw ? gw.url : upstreams[0].url, '/json', cfg.warmupRequests, cfg.connections);
      if (gw) await gw.ask('reset');
      const r = await cannon(autocannon, url, { connections: cfg.connections, durationSec: cfg.durationSec });
      const stats = gw ? await gw.ask('stats') : null;
      if (gw) await gw.stop();
      const run = {
        rps: r.requests.total / r.duration,
        p50: r.latency.p50,
        p99: r.latency.p99,
        requests: r.requests.total,
        errors: r.errors + r.timeouts,
        non2xx: r.non2xx,
        cpuMicrosPerRequest: stats && stats.served ? stats.cpuMicros / stats.served : null,
        gatewayCpuShare: stats ? stats.cpuMicros / 1000 / stats.wallMs : null,
      };
      runs[c.name].push(run);
      log(`   round ${round + 1} ${c.name.padEnd(19)} ${run.rps.toFixed(0).padStart(6)} req/s  p50 ${run.p50} ms  p99 ${run.p99} ms${run.errors || run.non2xx ? `  errors ${run.errors} non2xx ${run.non2xx}` : ''}${run.cpuMicrosPerRequest ? `  gateway CPU ${run.cpuMicrosPerRequest.toFixed(0)} µs/req` : ''}`);
    }
  }
  await up.stop();
  const result = contestants.map((c) => {
    const rs = runs[c.name];
    return {
      name: c.name,
      label: c.label,
      ...medianOf(rs, ['rps', 'p50', 'p99']),
      cpuMicrosPerRequest: rs[0].cpuMicrosPerRequest === null ? null : medianOf(rs, ['cpuMicrosPerRequest']).cpuMicrosPerRequest,
      errors: rs.reduce((a, r) => a + r.errors + r.non2xx, 0),
      rounds: rs,
    };
  });
  const by = Object.fromEntries(result.map((r) => [r.name, r]));
  if (picked) return { config: cfg, contestants: result, ratios: null };
  const ref = by['fastify-http-proxy'].rps;
  const ratios = {
    'ours-koa/fastify-http-proxy': by['ours-koa'].rps / ref,
    'ours-express/fastify-http-proxy': by['ours-express'].rps / ref,
    'ours-node/fastify-http-proxy': by['ours-node'].rps / ref,
    'ours-express/hpm-express': by['ours-express'].rps / by['hpm-express'].rps,
    'express-alone/fastify-http-proxy': by['express-alone'].rps / ref,
    'ours-node/fastify-http-proxy CPU per request': by['ours-node'].cpuMicrosPerRequest / by['fastify-http-proxy'].cpuMicrosPerRequest,
    'ours-koa/fastify-http-proxy CPU per request': by['ours-koa'].cpuMicrosPerRequest / by['fastify-http-proxy'].cpuMicrosPerRequest,
  };
  return { config: cfg, contestants: result, ratios };
}

// ---------------------------------------------------------------- scenario b

async function scenarioB() {
  const cfg = CFG.b;
  log(`b. tail: 3 heavy-tailed upstreams (${FAST.p * 100}% in ${FAST.min}-${FAST.max} ms, ${Math.round((1 - FAST.p) * 100)}% in ${SLOW.min}-${SLOW.max} ms), open loop ${cfg.rate} req/s × ${cfg.requests} requests per contestant`);
  const ids = ['a', 'b', 'c'];
  const contestants = [
    { name: 'direct', label: 'direct to one upstream' },
    { name: 'racing', label: 'redundant-proxy (node:http), 3 copies at once', kind: 'ours-node', options: { copies: 3 } },
    { name: 'hedged', label: `redundant-proxy (node:http), hedge: { delay: ${cfg.hedgeDelay} }`, kind: 'ours-node', options: { copies: 3, hedge: { delay: cfg.hedgeDelay } } },
  ];
  if (!quick) {
    contestants.push(
      { name: 'racing-koa', label: 'redundant-proxy in Koa, 3 copies at once', kind: 'ours-koa', options: { copies: 3 } },
      { name: 'hedged-10', label: 'redundant-proxy (node:http), hedge: { delay: 10 }', kind: 'ours-node', options: { copies: 3, hedge: { delay: 10 } } },
      { name: 'hedged-adaptive', label: "redundant-proxy (node:http), hedge: { delay: 'adaptive', maxExtraLoad: 0.25 } (the p87.5)", kind: 'ours-node', options: { copies: 3, hedge: { delay: 'adaptive', maxExtraLoad: 0.25 } } },
      // Reference points, not products: the floor this machine allows a racer.
      { name: 'ref-abort', label: 'reference racer (30 lines), losers aborted', kind: 'mini-race', options: { abortLosers: true } },
      { name: 'ref-drain', label: 'reference racer (30 lines), losers drained', kind: 'mini-race', options: { abortLosers: false } },
    );
  }
  const out = [];
  const ordered = picked ? [...picked].map((n) => contestants.find((c) => c.name === n)).filter(Boolean) : contestants;
  for (const c of ordered) {
    // Fresh upstreams for every contestant: each starts its seeded stream anew,
    // so every contestant meets exactly the same latency draws.
    const loadavg = os.loadavg()[0];
    const up = await startUpstreams(ids, 'heavy');
    const gw = c.kind ? await startGateway(c.kind, up.urls, c.options) : null;
    const origin = gw ? gw.url : up.urls[0].url;
    await warm(origin, '/warmup', cfg.warmup);
    if (gw) await gw.ask('reset');
    const before = await up.ask('stats');
    const load = await openLoop(origin, '/work', cfg);
    await sleep(50); // a race is reported once its losers' grace is over
    const after = await up.ask('stats');
    const stats = gw ? await gw.ask('stats') : null;
    if (gw) await gw.stop();
    await up.stop();
    const upstreamDelta = Object.fromEntries(ids.map((id) => [id, {
      requests: after.stats[id].requests - before.stats[id].requests,
      connections: after.stats[id].connections - before.stats[id].connections,
      timerSlop: after.stats[id].timerSlop,
    }]));
    // Timed from each request's own send (see openLoop); the same requests
    // timed from their scheduled send are kept too.
    const summary = summarize(load.latencies);
    const races = stats?.races ?? null;
    const entry = {
      name: c.name,
      label: c.label,
      options: c.options ?? null,
      loadavgBefore: loadavg,
      ...summary,
      errors: load.errors,
      statuses: load.statuses,
      fromSchedule: load.fromSchedule,
      sendLag: { mean: load.lag.mean, p50: load.lag.p50, p99: load.lag.p99, max: load.lag.max },
      // The reference racer always sends one copy per upstream.
      copiesPerRequest: races?.requests ? races.copiesSent / races.requests : c.kind === 'mini-race' ? ids.length : 1,
      extraCopiesPerRequest: races?.requests ? (races.copiesSent - races.requests) / races.requests : c.kind === 'mini-race' ? ids.length - 1 : 0,
      hedgedPerRequest: races?.requests ? races.hedged / races.requests : 0,
      gatewayRaceDuration: races?.durations ?? null,
      inGateway: stats?.inGateway ?? null,
      gatewayWinnerLatency: races?.winnerLatencies ?? null,
      raceOutcomes: races?.outcomes ?? null,
      copyOutcomes: races?.copyOutcomes ?? null,
      metrics: stats?.metrics ?? null,
      upstreams: upstreamDelta,
      newConnectionsPerRequest: Object.values(upstreamDelta).reduce((a, u) => a + u.connections, 0) / cfg.requests,
      latencies: load.latencies.map((x) => Math.round(x * 1000) / 1000),
    };
    out.push(entry);
    log(`   ${c.name.padEnd(10)} p50 ${summary.p50.toFixed(2)} ms  p99 ${summary.p99.toFixed(2)} ms  p99.9 ${summary.p999.toFixed(2)} ms (from the scheduled send: p99 ${load.fromSchedule.p99.toFixed(2)} ms)  copies/request ${entry.copiesPerRequest.toFixed(3)}  errors ${load.errors}  send lag p99 ${load.lag.p99.toFixed(2)} ms`);
  }
  // The ideal: the same draws, a proxy with zero overhead.
  const sim = simulate({ n: cfg.requests, delay: cfg.hedgeDelay, rotationStart: cfg.warmup });
  const sim10 = simulate({ n: cfg.requests, delay: 10, rotationStart: cfg.warmup });
  const model = {
    direct: summarize(sim.direct),
    race: summarize(sim.race),
    hedged: { ...summarize(sim.hedged.times), extraCopiesPerRequest: sim.hedged.extraCopiesPerRequest, delay: cfg.hedgeDelay },
    hedged10: { ...summarize(sim10.hedged.times), extraCopiesPerRequest: sim10.hedged.extraCopiesPerRequest, delay: 10 },
    idealLatencies: sim.race.map((x) => Math.round(x * 1000) / 1000),
  };
  const by = Object.fromEntries(out.map((r) => [r.name, r]));
  if (picked) return { config: cfg, contestants: out, model, ratios: null };
  const ratios = {
    'direct p99 / racing p99': by.direct.p99 / by.racing.p99,
    'racing p99 / ideal p99': by.racing.p99 / model.race.p99,
    'hedged p99 / racing p99': by.hedged.p99 / by.racing.p99,
    'hedged extra copies per request': by.hedged.extraCopiesPerRequest,
    ...(by['ref-drain'] ? { 'racing p99 / reference racer (drains losers) p99': by.racing.p99 / by['ref-drain'].p99 } : {}),
    'model: hedged p99 / ideal race p99': model.hedged.p99 / model.race.p99,
  };
  log(`   ideal (min of 3 draws) p50 ${model.race.p50.toFixed(2)} ms  p99 ${model.race.p99.toFixed(2)} ms  p99.9 ${model.race.p999.toFixed(2)} ms; model hedged(${cfg.hedgeDelay}) p99 ${model.hedged.p99.toFixed(2)} ms, extra ${(model.hedged.extraCopiesPerRequest * 100).toFixed(1)}%`);
  return { config: cfg, contestants: out, model, ratios };
}

// ---------------------------------------------------------------- scenario c

async function scenarioC() {
  const cfg = CFG.c;
  log(`c. cost of copies: 3 fast upstreams, redundant-proxy on node:http, copies 1/2/3, autocannon ${cfg.connections} connections, ${cfg.rounds} rounds × ${cfg.durationSec} s`);
  const up = await startUpstreams(['a', 'b', 'c'], 'fast');
  let contestants = [1, 2, 3].map((copies) => ({ name: `copies-${copies}`, label: `redundant-proxy, copies: ${copies}`, copies, kind: 'ours-node', options: { copies } }));
  if (!quick) {
    contestants.push(
      // Reference points, not products: what the copies cost a bare racer.
      { name: 'ref-abort-3', label: 'reference racer, 3 copies, losers aborted', copies: 3, kind: 'mini-race', options: { abortLosers: true } },
      { name: 'ref-drain-3', label: 'reference racer, 3 copies, losers drained', copies: 3, kind: 'mini-race', options: { abortLosers: false } },
    );
  }
  contestants = pick(contestants);
  const runs = Object.fromEntries(contestants.map((c) => [c.name, []]));
  for (let round = 0; round < cfg.rounds; round++) {
    const order = contestants.map((_, i) => contestants[(i + round) % contestants.length]);
    for (const c of order) {
      const gw = await startGateway(c.kind, up.urls, c.options);
      const url = `${gw.url}/json`;
      await warm(gw.url, '/json', cfg.warmupRequests, cfg.connections);
      await gw.ask('reset');
      const u0 = await up.ask('stats');
      const r = await cannon(autocannon, url, { connections: cfg.connections, durationSec: cfg.durationSec });
      await sleep(50); // a race is reported once its losers' grace is over
      const u1 = await up.ask('stats');
      const stats = await gw.ask('stats');
      await gw.stop();
      const conns = Object.keys(u1.stats).reduce((a, id) => a + u1.stats[id].connections - u0.stats[id].connections, 0);
      const upReqs = Object.keys(u1.stats).reduce((a, id) => a + u1.stats[id].requests - u0.stats[id].requests, 0);
      const run = {
        rps: r.requests.total / r.duration,
        p50: r.latency.p50,
        p99: r.latency.p99,
        errors: r.errors + r.timeouts + r.non2xx,
        cpuMicrosPerRequest: stats.cpuMicros / stats.served,
        gatewayCpuShare: stats.cpuMicros / 1000 / stats.wallMs,
        copiesPerRequest: stats.races?.requests ? stats.races.copiesSent / stats.races.requests : c.copies,
        upstreamRequestsPerRequest: upReqs / stats.served,
        newConnectionsPerRequest: conns / stats.served,
        upstreamCpuMicrosPerRequest: (u1.cpuMicros - u0.cpuMicros) / stats.served,
        copyOutcomes: stats.races?.copyOutcomes ?? null,
      };
      runs[c.name].push(run);
      log(`   round ${round + 1} ${c.name}  ${run.rps.toFixed(0).padStart(6)} req/s  gateway CPU ${run.cpuMicrosPerRequest.toFixed(0)} µs/req (${(run.gatewayCpuShare * 100).toFixed(0)}% of a core), upstreams ${run.upstreamCpuMicrosPerRequest.toFixed(0)} µs/req  p99 ${run.p99} ms  new upstream connections/request ${run.newConnectionsPerRequest.toFixed(2)}${run.errors ? `  errors ${run.errors}` : ''}`);
    }
  }
  await up.stop();
  const result = contestants.map((c) => {
    const rs = runs[c.name];
    return {
      name: c.name,
      label: c.label,
      copies: c.copies,
      ...medianOf(rs, ['rps', 'p50', 'p99', 'cpuMicrosPerRequest', 'gatewayCpuShare', 'copiesPerRequest', 'newConnectionsPerRequest', 'upstreamCpuMicrosPerRequest']),
      errors: rs.reduce((a, r) => a + r.errors, 0),
      rounds: rs,
    };
  });
  const by = Object.fromEntries(result.map((r) => [r.name, r]));
  if (picked) return { config: cfg, contestants: result, ratios: null };
  const ratios = {
    'copies-2 / copies-1 req/s': by['copies-2'].rps / by['copies-1'].rps,
    'copies-3 / copies-1 req/s': by['copies-3'].rps / by['copies-1'].rps,
    'copies-3 / copies-1 CPU per request': by['copies-3'].cpuMicrosPerRequest / by['copies-1'].cpuMicrosPerRequest,
  };
  return { config: cfg, contestants: result, ratios };
}

// ---------------------------------------------------------------- main

function targets(results) {
  // The targets of issue #12, as ratios measured in the same run.
  const t = [];
  const a = results.scenarios.a;
  if (a?.ratios) {
    for (const name of ['ours-node', 'ours-koa']) {
      const rps = a.ratios[`${name}/fastify-http-proxy`];
      const cpu = a.ratios[`${name}/fastify-http-proxy CPU per request`];
      t.push({ id: `a:${name}:rps`, scenario: 'a', target: `copies: 1, ${name} requests/s ≥ 0.95× @fastify/http-proxy's`, value: rps, display: `${rps.toFixed(2)}×`, met: rps >= 0.95 });
      t.push({ id: `a:${name}:cpu`, scenario: 'a', target: `copies: 1, ${name} gateway CPU per request ≤ @fastify/http-proxy's`, value: cpu, display: `${cpu.toFixed(2)}×`, met: cpu <= 1 });
    }
    const hpm = a.ratios['ours-express/hpm-express'];
    t.push({ id: 'a:ours-express', scenario: 'a', target: "copies: 1, in Express, requests/s ≥ 1.3× http-proxy-middleware's", value: hpm, display: `${hpm.toFixed(2)}×`, met: hpm >= 1.3 });
  }
  const b = results.scenarios.b;
  if (b?.ratios) {
    const r = b.ratios;
    const ref = r['racing p99 / reference racer (drains losers) p99'];
    if (ref !== undefined) t.push({ id: 'b:vs-reference', scenario: 'b', target: 'racing p99 ≤ the 30-line reference racer that drains its losers', value: ref, display: `${ref.toFixed(2)}× its p99`, met: ref <= 1 });
    t.push({ id: 'b:vs-direct', scenario: 'b', target: 'racing p99 ≥ 15× lower than direct p99', value: r['direct p99 / racing p99'], display: `${r['direct p99 / racing p99'].toFixed(1)}× lower`, met: r['direct p99 / racing p99'] >= 15 });
    t.push({ id: 'b:hedged-p99', scenario: 'b', target: 'hedged p99 within 2× racing p99', value: r['hedged p99 / racing p99'], display: `${r['hedged p99 / racing p99'].toFixed(2)}×`, met: r['hedged p99 / racing p99'] <= 2 });
    t.push({ id: 'b:hedged-extra', scenario: 'b', target: 'hedged: ≤ 15% extra copies', value: r['hedged extra copies per request'], display: `${(r['hedged extra copies per request'] * 100).toFixed(1)}%`, met: r['hedged extra copies per request'] <= 0.15 });
  }
  const c = results.scenarios.c;
  if (c?.ratios) {
    const ratio = c.ratios['copies-3 / copies-1 CPU per request'];
    t.push({ id: 'c:copies-3', scenario: 'c', target: 'copies: 3, gateway CPU per request ≤ 2× copies: 1', value: ratio, display: `${ratio.toFixed(2)}×`, met: ratio <= 2 });
  }
  const e = results.scenarios.e;
  if (e) {
    const n = `${e.requests.toLocaleString('en-US')} requests${e.truncated ? ' (time limit reached)' : ''}`;
    const planned = `${e.config.requests.toLocaleString('en-US')} raced requests${e.quick ? ' (--quick; a full run makes 200,000)' : ''}`;
    t.push({ id: 'e:heap', scenario: 'e', target: `heap after GC flat within ${e.heap.targetMB} MB over ${planned}`, value: e.heap.growthMB, display: `${e.heap.growthMB >= 0 ? '+' : ''}${e.heap.growthMB.toFixed(1)} MB over ${n}`, met: e.heap.flat && !e.truncated });
    t.push({ id: 'e:sockets', scenario: 'e', target: 'zero leaked sockets', value: e.sockets.leftAfterKeepAlive, display: `${e.sockets.clientSocketsLeaked} client, ${e.sockets.leftAfterKeepAlive} upstream sockets left`, met: e.sockets.zeroLeaked });
  }
  const f = results.scenarios.f?.results;
  const cell = (variant, kind) => f?.[variant]?.[3]?.[kind];
  const sat = results.scenarios.f?.saturation;
  if (sat?.read && sat?.update) {
    // Per request at load: the store traffic alone, as fast as Redis takes it.
    const read = sat.read.redisCpuMicrosPerRequest;
    const update = sat.update.redisCpuMicrosPerRequest;
    t.push({ id: 'f:redis-cpu-read', scenario: 'f', target: 'copies: 3, Redis CPU per raced read ≤ 40 µs (at load)', value: read, display: `${read.toFixed(0)} µs`, met: read <= 40 });
    t.push({ id: 'f:redis-cpu-update', scenario: 'f', target: 'copies: 3, Redis CPU per committed update ≤ 150 µs (at load)', value: update, display: `${update.toFixed(0)} µs`, met: update <= 150 });
  }
  if (cell('redis', 'read')) {
    const trips = cell('redis', 'read').criticalPathRoundTrips;
    t.push({ id: 'f:read-round-trips', scenario: 'f', target: 'a read without session or update: ≤ 1 store round trip on the critical path', value: trips, display: `${trips.toFixed(1)}`, met: trips <= 1.3 });
  }
  const spread = results.scenarios.f?.spread;
  if (spread) {
    const dev = spread.keys.maxDeviation;
    t.push({ id: 'f:cluster-keys', scenario: 'f', target: `Redis Cluster, 3 masters: keys per shard within ±10% over ${spread.requests.toLocaleString('en-US')} requests${results.quick ? ' (--quick; a full run makes 100,000)' : ''}`, value: dev, display: `±${(dev * 100).toFixed(1)}%`, met: dev <= 0.1 && spread.requestTagsOnMoreThanOneShard === 0 });
  }
  const d = results.scenarios.d;
  if (d?.results?.['redis-reads']?.redisCpuMicrosPerRequest != null) {
    // The issue's own measure: through HTTP, autocannon, scenario d.
    const read = d.results['redis-reads'].redisCpuMicrosPerRequest;
    const update = d.results['redis-updates'].redisCpuMicrosPerRequest;
    t.push({ id: 'd:redis-cpu-read', scenario: 'd', target: 'copies: 3, Redis CPU per raced read ≤ 40 µs (scenario d, through HTTP)', value: read, display: `${read.toFixed(0)} µs`, met: read <= 40 });
    t.push({ id: 'd:redis-cpu-update', scenario: 'd', target: 'copies: 3, Redis CPU per committed update ≤ 150 µs (scenario d, through HTTP)', value: update, display: `${update.toFixed(0)} µs`, met: update <= 150 });
  }
  if (d?.ratios) {
    const ratio = d.ratios['redis/memory reads req/s'];
    t.push({ id: 'd:redis-reads', scenario: 'd', target: 'Redis ÷ memory throughput ≥ 0.9× for reads', value: ratio, display: `${ratio.toFixed(2)}×`, met: ratio >= 0.9 });
  }
  return t;
}

async function main() {
  const results = {
    command: `npm run bench${args.length ? ` -- ${args.join(' ')}` : ''}`,
    quick,
    date: execSync('date -u').toString().trim(),
    machine: {
      nproc: Number(execSync('nproc').toString().trim()),
      cpu: os.cpus()[0]?.model ?? 'unknown',
      node: process.version,
      platform: `${os.type()} ${os.release()} ${os.arch()}`,
      loadavgAtStart: os.loadavg(),
    },
    library: libraryVersion(),
    scenarios: {},
  };
  log(`redundant-proxy benchmarks${quick ? ' (--quick)' : ''}: ${results.machine.nproc} CPUs, node ${process.version}, load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  log(`library: commit ${results.library.commit}${results.library.uncommittedLibFiles.length ? ` + uncommitted ${results.library.uncommittedLibFiles.join(', ')}` : ''}, dist sha256 ${results.library.distSha256} (snapshot)`);
  if (only.has('a')) results.scenarios.a = await scenarioA();
  if (only.has('b')) results.scenarios.b = await scenarioB();
  if (only.has('c')) results.scenarios.c = await scenarioC();
  if (only.has('d')) {
    log(`d. bookkeeping: reads and updates per second, memory store vs Redis (bench/bookkeeping.js)`);
    results.scenarios.d = await scenarioBookkeeping({ quick, dist: snapshotDir, log });
  }
  if (only.has('e')) {
    log(`e. memory: raced requests, heap after GC and sockets (bench/memory.js)`);
    results.scenarios.e = await scenarioMemory({ quick, dist: snapshotDir, log });
  }
  if (only.has('f')) {
    log(`f. store cost per request, by kind and copies, memory store and Redis (bench/store-cost.js)`);
    results.scenarios.f = await scenarioStoreCost({ quick, dist: snapshotDir, log });
  }
  results.machine.loadavgAtEnd = os.loadavg();
  results.durationSec = (Date.now() - started) / 1000;
  results.targets = targets(results);
  const full = only.size === ALL.length && !picked;
  mkdirSync(new URL('./results/', import.meta.url), { recursive: true });
  const file = new URL(full ? './results/latest.json' : './results/partial.json.tmp', import.meta.url);
  writeFileSync(file, `${JSON.stringify(results, null, 1)}\n`);
  log(`wrote ${file.pathname}`);
  if (full) {
    const written = writeReport(results);
    for (const f of written) log(`wrote ${f}`);
  }
  console.log('\ntargets:');
  for (const t of results.targets) console.log(`  ${t.met ? 'met   ' : 'MISSED'}  ${t.target}: ${t.display}`);
  console.log(`\ndone in ${results.durationSec.toFixed(0)} s`);
}

const cleanup = () => {
  for (const child of children) child.kill('SIGKILL');
  rmSync(snapshotDir, { recursive: true, force: true });
};
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
