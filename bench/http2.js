// HTTP/1.1 or HTTP/2 to the upstreams, over TLS: what racing three copies
// with losers stopped costs the gateway on each. Over HTTP/1.1 a loser that
// has not answered within its grace is stopped by closing its connection,
// so the next copy to that upstream pays a new TCP and TLS handshake; over
// HTTP/2 it is stopped by resetting its stream and the connection stays.
//
// Three upstreams (node:https and node:http2 with allowHTTP1: false, one
// self-signed certificate made for the run) in one child process, answering
// after the heavy-tailed latency of bench/model.js (90% in 1-3 ms, 10% in
// 50-150 ms: the slow ones lose and are stopped). Two gateways, each in its
// own child process (redundantProxy with copies: 3, `tls: { ca }`, and
// `http2: true` for one), so that process.cpuUsage() measures each alone.
// The load is closed-loop from this process: CONCURRENCY requests in flight,
// in rounds that alternate the two gateways so both see the same machine.
//
// Bounded: ROUNDS × 2 × PER_ROUND requests, each round at most ROUND_MS.
// Loopback only. `node bench/http2.js [--quick]` after `npm run build`
// (or RP_BENCH_DIST=<a dist/ directory>); JSON on stdout.

import http from 'node:http';
import https from 'node:https';
import http2 from 'node:http2';
import { fork } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Agent, request } from 'undici';
import { runStandalone } from './child.js';
import { heavyTail, mulberry32, SEEDS, summarize } from './model.js';

const role = process.argv[2];
if (role === '--upstreams') void upstreams(JSON.parse(process.argv[3]));
else if (role === '--gateway') void gateway(JSON.parse(process.argv[3]));
else if (process.argv[1] === fileURLToPath(import.meta.url)) runStandalone(scenarioHttp2);

/** A child process, its `ready` message, and requests answered by id. */
function child(args, name) {
  const proc = fork(fileURLToPath(import.meta.url), args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  let seq = 0;
  const pending = new Map();
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  const ready = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${name} not ready within 20 s`)), 20_000);
    proc.once('message', (m) => (clearTimeout(t), resolve(m)));
    void exited.then((code) => (clearTimeout(t), reject(new Error(`${name} exited (${code})`))));
  });
  proc.on('message', (m) => {
    const p = pending.get(m?.id);
    if (p) (pending.delete(m.id), p(m));
  });
  const ask = (type) => new Promise((resolve) => (pending.set(++seq, resolve), proc.send({ type, id: seq })));
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    await exited;
  };
  return { ready, ask, stop };
}

// ---- the upstreams' process -------------------------------------------------

async function upstreams({ cert, key }) {
  const stats = { h1: { connections: 0, requests: 0 }, h2: { connections: 0, requests: 0, streamsReset: 0 } };
  const ports = { h1: [], h2: [] };
  const servers = [];
  for (const [i, seed] of Object.values(SEEDS).entries()) {
    // One PRNG per upstream and protocol, seeded alike: both gateways see the same latencies.
    const rng = { h1: mulberry32(seed), h2: mulberry32(seed) };
    const h1 = https.createServer({ cert, key }, (req, res) => {
      stats.h1.requests++;
      setTimeout(() => {
        if (res.destroyed) return; // stopped: the gateway closed the connection
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': 12 });
        res.end(`{"from":"${'abc'[i]}"}`);
      }, heavyTail(rng.h1));
    });
    h1.keepAliveTimeout = 30_000;
    h1.on('secureConnection', () => stats.h1.connections++);
    h1.on('tlsClientError', () => {});
    const h2 = http2.createSecureServer({ cert, key, allowHTTP1: false });
    h2.on('secureConnection', () => stats.h2.connections++);
    h2.on('tlsClientError', () => {});
    h2.on('stream', (stream) => {
      stats.h2.requests++;
      stream.on('error', () => {});
      const t = setTimeout(() => {
        if (stream.destroyed || stream.closed) return;
        stream.respond({ ':status': 200, 'content-type': 'application/json', 'content-length': 12 });
        stream.end(`{"from":"${'abc'[i]}"}`);
      }, heavyTail(rng.h2));
      stream.on('close', () => {
        clearTimeout(t);
        if (stream.rstCode !== undefined && !stream.headersSent) stats.h2.streamsReset++;
      });
    });
    for (const [kind, server] of [['h1', h1], ['h2', h2]]) {
      await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
      ports[kind].push(server.address().port);
      servers.push(server);
    }
  }
  process.on('message', (m) => {
    const cpu = process.cpuUsage();
    if (m.type === 'stats') process.send({ id: m.id, stats, cpuMicros: cpu.user + cpu.system });
  });
  process.once('SIGTERM', () => process.exit(0));
  process.once('disconnect', () => process.exit(0)); // the parent is gone
  process.send({ type: 'ready', ports });
}

// ---- a gateway's process ----------------------------------------------------

async function gateway({ ports, ca, http2: h2 }) {
  const dist = process.env.RP_BENCH_DIST ?? fileURLToPath(new URL('../dist', import.meta.url));
  const { redundantProxy } = await import(pathToFileURL(`${dist}/index.js`).href);
  const proxy = redundantProxy({
    upstreams: ports.map((port, i) => ({ id: 'abc'[i], url: `https://127.0.0.1:${port}` })),
    copies: 3,
    tls: { ca },
    http2: h2,
    // The upstreams are slow on purpose; none is to be ejected for it.
    ejection: false,
  });
  const copies = {};
  let races = 0;
  proxy.on('race:end', (r) => {
    races++;
    for (const c of r.copies) copies[c.outcome] = (copies[c.outcome] ?? 0) + 1;
  });
  proxy.on('error', () => {});
  const server = http.createServer(proxy.handler);
  server.keepAliveTimeout = 30_000;
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  let cpu = process.cpuUsage();
  process.on('message', (m) => {
    if (m.type === 'reset') cpu = process.cpuUsage();
    const used = process.cpuUsage(cpu);
    process.send({ id: m.id, cpuMicros: used.user + used.system, races, copies });
  });
  process.once('SIGTERM', () => void proxy.close().finally(() => process.exit(0)));
  process.once('disconnect', () => process.exit(0));
  process.send({ type: 'ready', port: server.address().port });
}

// ---- the load, and the report ----------------------------------------------

/** The comparison, whole; `quick` for a short run. */
export async function scenarioHttp2({ quick }) {
  const ROUNDS = quick ? 2 : 5;
  const PER_ROUND = quick ? 300 : 1500;
  const CONCURRENCY = Number(process.argv.find((a) => a.startsWith('--concurrency='))?.slice(14) ?? 16);
  const ROUND_MS = quick ? 10_000 : 30_000;
  const WARMUP = 100;

  const { generate } = await import('selfsigned');
  const pems = await generate([{ name: 'commonName', value: '127.0.0.1' }], { keyType: 'ec', algorithm: 'sha256', extensions: [{ name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }] }] });
  const ups = child(['--upstreams', JSON.stringify({ cert: pems.cert, key: pems.private })], 'upstreams');
  const started = [ups];
  const cleanup = () => Promise.all(started.map((c) => c.stop()));
  try {
    const { ports } = await ups.ready;
    const gateways = {};
    for (const kind of ['h1', 'h2']) {
      const g = child(['--gateway', JSON.stringify({ ports: ports[kind], ca: pems.cert, http2: kind === 'h2' })], `gateway ${kind}`);
      started.push(g);
      gateways[kind] = { ...g, port: (await g.ready).port };
    }
    const agent = new Agent({ keepAliveTimeout: 30_000, connections: CONCURRENCY });
    const totals = { h1: emptyTotals(), h2: emptyTotals() };

    for (const kind of ['h1', 'h2']) await load(agent, gateways[kind].port, WARMUP, CONCURRENCY, ROUND_MS);
    for (let round = 0; round < ROUNDS; round++) {
      // Alternated, and the order flipped each round, so neither always runs second.
      for (const kind of round % 2 ? ['h2', 'h1'] : ['h1', 'h2']) {
        const g = gateways[kind];
        const upsBefore = await ups.ask('stats');
        const before = upsBefore.stats[kind];
        await g.ask('reset');
        const gBefore = await g.ask('stats');
        const r = await load(agent, g.port, PER_ROUND, CONCURRENCY, ROUND_MS);
        const gAfter = await g.ask('stats');
        const upsAfter = await ups.ask('stats');
        const after = upsAfter.stats[kind];
        const t = totals[kind];
        t.requests += r.done;
        t.failed += r.failed;
        t.wallMs += r.wallMs;
        t.cpuMicros += gAfter.cpuMicros - gBefore.cpuMicros;
        t.upstreamCpuMicros += upsAfter.cpuMicros - upsBefore.cpuMicros;
        t.upstreamConnections += after.connections - before.connections;
        t.upstreamRequests += after.requests - before.requests;
        for (const [o, n] of Object.entries(gAfter.copies)) t.copies[o] = (t.copies[o] ?? 0) + n - (gBefore.copies[o] ?? 0);
        t.latencies.push(...r.latencies);
      }
    }
    await agent.close();
    const result = (kind) => {
      const t = totals[kind];
      const lat = summarize(t.latencies);
      return {
        requests: t.requests,
        failed: t.failed,
        requestsPerSec: round1((t.requests / t.wallMs) * 1000),
        gatewayCpuMicrosPerRequest: round1(t.cpuMicros / t.requests),
        // The three upstreams' process, for all three copies of a request.
        upstreamsCpuMicrosPerRequest: round1(t.upstreamCpuMicros / t.requests),
        newUpstreamConnectionsPerRequest: round3(t.upstreamConnections / t.requests),
        copiesPerRequest: round3(t.upstreamRequests / t.requests),
        stoppedLosersPerRequest: round3((t.copies.stopped ?? 0) / t.requests),
        copyOutcomes: t.copies,
        latencyMs: { p50: round1(lat.p50), p90: round1(lat.p90), p99: round1(lat.p99) },
      };
    };
    const h1 = result('h1');
    const h2 = result('h2');
    return {
      scenario: 'http2: copies 3 over TLS, losers stopped; HTTP/1.1 vs HTTP/2 upstreams',
      date: new Date().toISOString(),
      node: process.version,
      quick,
      config: { rounds: ROUNDS, perRound: PER_ROUND, concurrency: CONCURRENCY, copies: 3, upstreams: 3, model: '90% 1-3 ms, 10% 50-150 ms' },
      http1: h1,
      http2: h2,
      ratios: {
        requestsPerSec: round3(h2.requestsPerSec / h1.requestsPerSec),
        gatewayCpuPerRequest: round3(h2.gatewayCpuMicrosPerRequest / h1.gatewayCpuMicrosPerRequest),
        upstreamsCpuPerRequest: round3(h2.upstreamsCpuMicrosPerRequest / h1.upstreamsCpuMicrosPerRequest),
        newUpstreamConnectionsPerRequest: h1.newUpstreamConnectionsPerRequest === 0 ? null : round3(h2.newUpstreamConnectionsPerRequest / h1.newUpstreamConnectionsPerRequest),
      },
      note: 'ratios are HTTP/2 over HTTP/1.1 from this one run; the absolute figures depend on the machine',
    };
  } finally {
    await cleanup();
  }
}

function emptyTotals() {
  return { requests: 0, failed: 0, wallMs: 0, cpuMicros: 0, upstreamCpuMicros: 0, upstreamConnections: 0, upstreamRequests: 0, copies: {}, latencies: [] };
}

/** `count` requests, `concurrency` at a time, through the gateway on `port`; stops at `maxMs`. */
async function load(agent, port, count, concurrency, maxMs) {
  const latencies = [];
  let next = 0;
  let done = 0;
  let failed = 0;
  const t0 = performance.now();
  const worker = async () => {
    while (next < count && performance.now() - t0 < maxMs) {
      next++;
      const s = performance.now();
      try {
        const res = await request(`http://127.0.0.1:${port}/work/${next}`, { dispatcher: agent });
        await res.body.dump();
        if (res.statusCode === 200) done++;
        else failed++;
      } catch {
        failed++;
      }
      latencies.push(performance.now() - s);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { done, failed, latencies, wallMs: performance.now() - t0 };
}

const round1 = (x) => Math.round(x * 10) / 10;
const round3 = (x) => Math.round(x * 1000) / 1000;
