// Scenario: memory and sockets over a long run. 200 000 raced requests
// (--quick: 20 000) through a gateway racing three fast upstreams, a few of
// whose answers are delayed a little, so that some losing copies are drained
// and some are stopped (their connections closed). Does the gateway's heap
// stay flat, and does every socket it opened go away?
//
//   upstreams: one child process, three node:http servers; tiny JSON answers,
//              3% of them (seeded) delayed 1-20 ms;
//   gateway:   one child process started with --expose-gc: redundantProxy on
//              node:http, 3 copies at once, the in-memory store (default size,
//              10 000 requests); on each probe it runs global.gc() and reports
//              heap used and its active resources (TCPSocketWrap, Timeout…);
//   client:    this process, an undici Pool of 32 connections, 32 requests in
//              flight at most, bounded by count and by a time limit.
//
// Probes: after a warm-up of 2 000 requests; after each quarter of the load;
// 1 s after the load (client still connected, idle); after the client closed
// its connections; and once the gateway's idle upstream connections expired.
//
// Run alone: `node bench/memory.js [--quick]` prints the results as JSON on
// stdout (progress on stderr). From bench/run.js:
//   import { scenarioMemory } from './memory.js';
//   const r = await scenarioMemory({ quick, dist: snapshotDir, log });

import { forkChild, runStandalone, stopChild } from './child.js';
import { mulberry32, SEEDS } from './model.js';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const SELF = fileURLToPath(import.meta.url);
const DEFAULT_DIST = fileURLToPath(new URL('../dist/', import.meta.url));
const UPSTREAM_IDS = ['a', 'b', 'c'];

export const MEMORY_CONFIG = {
  quick: { requests: 20_000, warmup: 2_000, concurrency: 32, checkpoints: 4, timeLimitSec: 90, slowShare: 0.03, slowMinMs: 1, slowMaxMs: 20 },
  full: { requests: 200_000, warmup: 2_000, concurrency: 32, checkpoints: 4, timeLimitSec: 400, slowShare: 0.03, slowMinMs: 1, slowMaxMs: 20 },
};
/** Targets: heap growth from the warm-up to the end, in MB. */
const HEAP_TARGET_MB = 15;
/** The proxy's default `connections` per upstream: the bound of its pools. */
const POOL_CONNECTIONS = 256;
const TCP_STATES = { '01': 'ESTABLISHED', '02': 'SYN_SENT', '03': 'SYN_RECV', '04': 'FIN_WAIT1', '05': 'FIN_WAIT2', '06': 'TIME_WAIT', '07': 'CLOSE', '08': 'CLOSE_WAIT', '09': 'LAST_ACK', '0A': 'LISTEN', '0B': 'CLOSING' };

// ====================================================================== parent

/**
 * Runs the scenario and returns a plain JSON-serialisable object.
 * @param {{ quick?: boolean, dist?: string, log?: (...m: unknown[]) => void }} [options]
 *   dist: the directory of the built library (a snapshot of dist/); default
 *   process.env.RP_BENCH_DIST, else ../dist. log: progress lines (default stderr).
 */
export async function scenarioMemory({ quick = false, dist = process.env.RP_BENCH_DIST ?? DEFAULT_DIST, log = (...m) => console.error(...m) } = {}) {
  const cfg = quick ? MEMORY_CONFIG.quick : MEMORY_CONFIG.full;
  const { Pool } = await import('undici');
  const children = new Set();
  const onExit = () => {
    for (const c of children) c.kill('SIGKILL');
  };
  process.on('exit', onExit);
  const started = performance.now();
  const loadavgAtStart = os.loadavg();
  let pool = null;
  try {
    const up = startChild('upstreams', { slowShare: cfg.slowShare, slowMinMs: cfg.slowMinMs, slowMaxMs: cfg.slowMaxMs }, dist, children);
    const { ports } = await up.ready;
    const upstreams = UPSTREAM_IDS.map((id) => ({ id, url: `http://127.0.0.1:${ports[id]}` }));
    const gw = startChild('gateway', { upstreams }, dist, children, ['--expose-gc']);
    const { port } = await gw.ready;
    const origin = `http://127.0.0.1:${port}`;
    log(`memory: ${cfg.requests} raced requests (3 copies) after a warm-up of ${cfg.warmup}, ${cfg.concurrency} in flight, ${(cfg.slowShare * 100).toFixed(0)}% of upstream answers delayed ${cfg.slowMinMs}-${cfg.slowMaxMs} ms, time limit ${cfg.timeLimitSec} s`);

    pool = new Pool(origin, { connections: cfg.concurrency, pipelining: 1 });
    const load = { done: 0, errors: 0, statuses: {}, errorCodes: {} };
    const deadline = performance.now() + cfg.timeLimitSec * 1000;
    const checkpoints = [];
    const probe = async (label) => {
      const g = await gw.ask('probe');
      const u = await up.ask('stats');
      const cp = {
        label,
        requestsDone: load.done,
        heapUsedMB: mb(g.memory.heapUsed),
        heapTotalMB: mb(g.memory.heapTotal),
        externalMB: mb(g.memory.external),
        arrayBuffersMB: mb(g.memory.arrayBuffers),
        rssMB: mb(g.memory.rss),
        sockets: {
          /** The gateway's TCP sockets to the client (accepted; server.getConnections()). */
          client: g.clientSockets,
          /** Its TCP sockets to the upstreams, from /proc (undici unrefs idle ones, so getActiveResourcesInfo misses them). */
          upstream: g.tcp ? g.tcp.upstream : null,
          /** The same connections as the upstreams count them (open connections they accepted). */
          openAtUpstreams: Object.values(u.servers).reduce((a, s) => a + s.open, 0),
          /** Every TCP socket the gateway holds a descriptor for, from /proc, by state. */
          total: g.tcp ? g.tcp.client + g.tcp.upstream + g.tcp.other : null,
          states: g.tcp ? g.tcp.states : null,
          /** process.getActiveResourcesInfo(): TCPSocketWrap (referenced handles only). */
          tcpSocketWrap: g.resources.TCPSocketWrap ?? 0,
        },
        timeouts: g.resources.Timeout ?? 0,
        resources: g.resources,
        storeSize: g.storeSize,
        gatewayRequests: g.metrics.requests,
      };
      checkpoints.push(cp);
      log(`   ${label.padEnd(22)} ${String(load.done).padStart(7)} requests  heap ${cp.heapUsedMB.toFixed(1)} MB (rss ${cp.rssMB.toFixed(0)} MB)  sockets: client ${cp.sockets.client}, upstream ${cp.sockets.upstream} (upstreams see ${cp.sockets.openAtUpstreams}), TCPSocketWrap ${cp.sockets.tcpSocketWrap}  Timeout ${cp.timeouts}  store ${cp.storeSize}`);
      return cp;
    };

    await run(pool, load, cfg.warmup, cfg.concurrency, deadline);
    const warmupErrors = load.errors;
    await sleep(200); // the last races' losers settle
    const before = await probe('after warm-up');
    const counted0 = load.done;
    const u0 = await up.ask('stats');
    const t0 = performance.now();
    let truncated = false;
    for (let i = 1; i <= cfg.checkpoints; i++) {
      const target = Math.round((cfg.requests * i) / cfg.checkpoints);
      await run(pool, load, target - (load.done - counted0), cfg.concurrency, deadline);
      if (load.done - counted0 < target) truncated = true;
      const loadEnd = performance.now();
      if (i === cfg.checkpoints || truncated) load.seconds = (loadEnd - t0) / 1000;
      await sleep(200);
      await probe(`${Math.round((100 * i) / cfg.checkpoints)}%`);
      if (truncated) {
        log(`   time limit of ${cfg.timeLimitSec} s reached after ${load.done - counted0} requests`);
        break;
      }
    }
    const u1 = await up.ask('stats');
    const stats = await gw.ask('probe');
    await sleep(1000);
    const idle = await probe('idle 1 s');
    await pool.close();
    pool = null;
    await sleep(300);
    const closed = await probe('client closed');
    // Wait for the pooled upstream connections to expire (undici keep-alive, ~4 s).
    const expiry = performance.now() + 10_000;
    let last = closed;
    if ((closed.sockets.total ?? closed.sockets.openAtUpstreams) > 0) {
      for (;;) {
        await sleep(500);
        const g = await gw.ask('sockets');
        const u = await up.ask('stats');
        const open = g.tcp ? g.tcp.client + g.tcp.upstream + g.tcp.other : Object.values(u.servers).reduce((a, x) => a + x.open, 0);
        if (open === 0 || performance.now() >= expiry) break;
      }
      last = await probe('keep-alive expired');
    }
    const measured = load.done - counted0;
    const upDelta = Object.fromEntries(UPSTREAM_IDS.map((id) => [id, {
      requests: u1.servers[id].requests - u0.servers[id].requests,
      connections: u1.servers[id].connections - u0.servers[id].connections,
      delayed: u1.servers[id].delayed - u0.servers[id].delayed,
      closedBeforeAnswer: u1.servers[id].closedBeforeAnswer - u0.servers[id].closedBeforeAnswer,
    }]));
    const copyOutcomes = {};
    for (const u of Object.values(stats.metrics.upstreams)) for (const [k, v] of Object.entries(u.outcomes)) copyOutcomes[k] = (copyOutcomes[k] ?? 0) + v;
    const end = closed;
    const quarter = checkpoints.find((c) => c.label === `${Math.round(100 / cfg.checkpoints)}%`);
    const heapGrowthMB = end.heapUsedMB - before.heapUsedMB;
    const result = {
      scenario: 'memory',
      quick,
      config: { ...cfg, proxy: 'redundantProxy on node:http, copies: 3 (all at once), default MemorySessionStore (max 10 000 requests), connections 256 per upstream', client: `undici Pool, ${cfg.concurrency} connections, GET /item/<n>` },
      machine: { nproc: os.cpus().length, loadavgAtStart, loadavgAtEnd: os.loadavg(), node: process.version },
      requests: measured,
      truncated,
      seconds: load.seconds,
      rps: measured / load.seconds,
      errors: load.errors - warmupErrors,
      errorCodes: load.errorCodes,
      statuses: load.statuses,
      non2xx: Object.entries(load.statuses).reduce((a, [s, n]) => a + (Number(s) >= 200 && Number(s) < 300 ? 0 : n), 0),
      gateway: { raceOutcomes: stats.metrics.outcomes, copyOutcomes, copiesSent: stats.metrics.copiesSent, errorEvents: stats.errorEvents },
      upstreams: upDelta,
      newUpstreamConnectionsPerRequest: Object.values(upDelta).reduce((a, u) => a + u.connections, 0) / measured,
      checkpoints,
      heap: {
        afterWarmupMB: before.heapUsedMB,
        endMB: end.heapUsedMB,
        maxMB: Math.max(...checkpoints.map((c) => c.heapUsedMB)),
        growthMB: heapGrowthMB,
        /** From the first quarter (the store is full by then: 10 000 records) to the end. */
        growthAfterFirstQuarterMB: quarter ? end.heapUsedMB - quarter.heapUsedMB : null,
        targetMB: HEAP_TARGET_MB,
        flat: Math.abs(heapGrowthMB) <= HEAP_TARGET_MB,
      },
      sockets: {
        afterWarmup: before.sockets,
        idle: idle.sockets,
        clientClosed: closed.sockets,
        keepAliveExpired: last === closed ? null : last.sockets,
        timeoutsAfterWarmup: before.timeouts,
        timeoutsClientClosed: closed.timeouts,
        timeoutsKeepAliveExpired: last === closed ? null : last.timeouts,
        // Zero leaked: once the client closed, its sockets are gone and the
        // upstream ones stay within the pools; once idle past keep-alive, none is left.
        poolBound: POOL_CONNECTIONS * UPSTREAM_IDS.length,
        clientSocketsLeaked: closed.sockets.client,
        upstreamWithinPool: upstreamOf(closed) <= POOL_CONNECTIONS * UPSTREAM_IDS.length,
        leftAfterKeepAlive: last === closed ? upstreamOf(closed) : (last.sockets.total ?? upstreamOf(last)),
        zeroLeaked: closed.sockets.client === 0 && upstreamOf(closed) <= POOL_CONNECTIONS * UPSTREAM_IDS.length && (last === closed ? upstreamOf(closed) === 0 : (last.sockets.total ?? upstreamOf(last)) === 0),
      },
      durationSec: (performance.now() - started) / 1000,
    };
    log(`   ${measured} requests in ${load.seconds.toFixed(1)} s: ${result.rps.toFixed(0)} req/s, errors ${result.errors}, non-2xx ${result.non2xx}; copies ${JSON.stringify(copyOutcomes)}`);
    log(`   heap ${before.heapUsedMB.toFixed(1)} → ${end.heapUsedMB.toFixed(1)} MB (growth ${heapGrowthMB.toFixed(1)} MB, target ±${HEAP_TARGET_MB}); sockets after the client closed: client ${closed.sockets.client}, upstream ${closed.sockets.upstream}; after keep-alive expiry: ${result.sockets.leftAfterKeepAlive}`);
    return result;
  } finally {
    if (pool) await pool.destroy().catch(() => {});
    await Promise.allSettled([...children].map((c) => stopChild(c)));
    process.off('exit', onExit);
  }
}

const mb = (bytes) => bytes / 2 ** 20;
const upstreamOf = (cp) => cp.sockets.upstream ?? cp.sockets.openAtUpstreams;

/** `count` more requests, `concurrency` at a time, until `deadline`. */
async function run(pool, load, count, concurrency, deadline) {
  let issued = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (issued < count && performance.now() < deadline) {
        const n = load.done + issued++;
        try {
          const { statusCode, body } = await pool.request({ path: `/item/${n % 997}`, method: 'GET', headersTimeout: 10_000, bodyTimeout: 10_000 });
          await body.dump();
          load.statuses[statusCode] = (load.statuses[statusCode] ?? 0) + 1;
        } catch (err) {
          load.errors++;
          const code = err?.code ?? err?.name ?? 'error';
          load.errorCodes[code] = (load.errorCodes[code] ?? 0) + 1;
        }
      }
    }),
  );
  load.done += issued;
}

// --------------------------------------------------------------- child control

function startChild(role, config, dist, children, execArgv = []) {
  return forkChild(SELF, ['--child', role, JSON.stringify(config)], { name: `memory ${role}`, dist, children, execArgv });
}

// ====================================================================== children

async function upstreamsMain(config) {
  const servers = {};
  for (const id of UPSTREAM_IDS) {
    const rng = mulberry32(SEEDS[id]);
    const stats = { requests: 0, connections: 0, open: 0, delayed: 0, closedBeforeAnswer: 0 };
    const body = Buffer.from(JSON.stringify({ ok: true, upstream: id }));
    const answer = (res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
      res.end(body);
    };
    const server = http.createServer((req, res) => {
      stats.requests++;
      req.resume();
      if (rng() < config.slowShare) {
        stats.delayed++;
        const ms = config.slowMinMs + rng() * (config.slowMaxMs - config.slowMinMs);
        const timer = setTimeout(() => answer(res), ms);
        res.once('close', () => {
          if (!res.writableFinished) {
            clearTimeout(timer); // the proxy stopped this copy
            stats.closedBeforeAnswer++;
          }
        });
        return;
      }
      answer(res);
    });
    server.on('connection', (socket) => {
      stats.connections++;
      stats.open++;
      socket.once('close', () => stats.open--);
    });
    servers[id] = { server, stats };
  }
  await Promise.all(Object.values(servers).map(({ server }) => new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))));
  process.send({ type: 'ready', ports: Object.fromEntries(Object.entries(servers).map(([id, { server }]) => [id, server.address().port])) });
  const close = () => {
    for (const { server } of Object.values(servers)) {
      server.closeAllConnections();
      server.close();
    }
    process.exit(0);
  };
  process.on('message', (msg) => {
    if (msg?.type === 'stats') process.send({ type: 'stats', id: msg.id, servers: Object.fromEntries(Object.entries(servers).map(([id, { stats }]) => [id, { ...stats }])) });
    else if (msg?.type === 'close') close();
  });
  process.on('disconnect', close);
}

async function gatewayMain(config) {
  if (typeof globalThis.gc !== 'function') throw new Error('the gateway child needs --expose-gc');
  const dist = (process.env.RP_BENCH_DIST ?? DEFAULT_DIST).replace(/\/?$/, '/');
  const { redundantProxy, MemorySessionStore } = await import(pathToFileURL(`${dist}index.js`).href);
  // The proxy's default store, made here only so that its size can be reported.
  const store = new MemorySessionStore();
  const proxy = redundantProxy({ upstreams: config.upstreams, store });
  let errorEvents = 0;
  proxy.on('error', () => errorEvents++);
  const server = http.createServer(proxy.handler);
  server.keepAliveTimeout = 30_000;
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  process.send({ type: 'ready', port: server.address().port });

  const upstreamPorts = new Set(config.upstreams.map((u) => Number(new URL(u.url).port)));
  const gatewayPort = server.address().port;
  // undici unrefs its idle sockets, and process.getActiveResourcesInfo() lists
  // only referenced handles: the gateway's own TCP sockets are counted from
  // /proc instead (Linux): its file descriptors' socket inodes, classified by
  // the ports in /proc/net/tcp{,6}. null where /proc is not there.
  const tcpSockets = () => {
    try {
      const inodes = new Set();
      for (const fd of readdirSync('/proc/self/fd')) {
        try {
          const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
          if (m) inodes.add(m[1]);
        } catch {}
      }
      const out = { client: 0, upstream: 0, other: 0, states: {} };
      for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
        let text = '';
        try {
          text = readFileSync(file, 'utf8');
        } catch {
          continue;
        }
        for (const line of text.split('\n').slice(1)) {
          const f = line.trim().split(/\s+/);
          if (f.length < 10 || !inodes.has(f[9]) || f[3] === '0A') continue; // not ours, or LISTEN
          const local = parseInt(f[1].split(':')[1], 16);
          const remote = parseInt(f[2].split(':')[1], 16);
          out.states[TCP_STATES[f[3]] ?? f[3]] = (out.states[TCP_STATES[f[3]] ?? f[3]] ?? 0) + 1;
          if (local === gatewayPort) out.client++;
          else if (upstreamPorts.has(remote)) out.upstream++;
          else out.other++;
        }
      }
      return out;
    } catch {
      return null;
    }
  };
  const resources = () => {
    const counts = {};
    for (const r of process.getActiveResourcesInfo()) counts[r] = (counts[r] ?? 0) + 1;
    return counts;
  };
  let closing = false;
  const close = async () => {
    if (closing) return;
    closing = true;
    setTimeout(() => process.exit(0), 5000).unref();
    server.closeAllConnections();
    server.close();
    await Promise.race([proxy.close(), sleep(2000)]);
    await store.close();
    process.exit(0);
  };
  process.on('message', async (msg) => {
    switch (msg?.type) {
      case 'probe': {
        for (let i = 0; i < 3; i++) {
          globalThis.gc();
          await new Promise((r) => setImmediate(r));
        }
        const memory = process.memoryUsage();
        const clientSockets = await new Promise((r) => server.getConnections((err, n) => r(err ? -1 : n)));
        process.send({ type: 'probe', id: msg.id, memory, resources: resources(), tcp: tcpSockets(), clientSockets, storeSize: store.size, metrics: proxy.metrics(), errorEvents });
        break;
      }
      case 'sockets':
        process.send({ type: 'sockets', id: msg.id, resources: resources(), tcp: tcpSockets() });
        break;
      case 'close':
        await close();
        break;
      default:
    }
  });
  process.on('disconnect', () => void close());
}

// ======================================================================= main

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  if (process.argv[2] === '--child') {
    const config = JSON.parse(process.argv[4]);
    try {
      if (process.argv[3] === 'upstreams') await upstreamsMain(config);
      else await gatewayMain(config);
    } catch (err) {
      process.send?.({ type: 'failed', error: String(err?.stack ?? err) });
      process.exit(1);
    }
  } else {
    runStandalone(scenarioMemory);
  }
}
