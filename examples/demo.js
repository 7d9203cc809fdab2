// npm run demo
//
// Three replicas of an application server that are usually fast but
// sometimes very slow, and a Koa gateway that races every request across all
// three with redundantProxy(). The same requests are sent straight to one
// replica, then through the gateway, and their latencies compared.
// Everything runs on 127.0.0.1 in this process, and exits by itself.

import http from 'node:http';
import Koa from 'koa';
import { redundantProxy } from '../dist/index.js';

const REQUESTS = 300; // per phase
// Requests in flight at a time. One at a time keeps this demo about the
// replicas' latency: with client, gateway and three replicas sharing one
// process (and each request costing three upstream calls), more concurrency
// on a small machine mostly measures this process's CPU instead.
const CONCURRENCY = 1;
const WARMUP = 30; // per phase, not counted

// Stop no matter what after 30 s.
setTimeout(() => {
  console.error('demo: still running after 30 s, giving up');
  process.exit(1);
}, 30_000).unref();

// A seeded PRNG (mulberry32), so that every run draws the same latencies.
function mulberry32(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) >>> 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// A replica: 90% of answers take 1-3 ms, 10% take 50-150 ms (a GC pause, a
// cold cache, a noisy neighbour...). `/warmup` answers at once.
function startReplica(name, seed) {
  const random = mulberry32(seed);
  const server = http.createServer((req, res) => {
    const ms = req.url === '/warmup' ? 0 : random() < 0.9 ? 1 + 2 * random() : 50 + 100 * random();
    setTimeout(() => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ replica: name, ms: Math.round(ms * 10) / 10 }));
    }, ms);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

const url = (server, path = '') => `http://127.0.0.1:${server.address().port}${path}`;

// Sends `count` GET requests to `target`, `CONCURRENCY` at a time; returns each one's latency in ms.
async function load(target, count) {
  const latencies = [];
  let sent = 0;
  async function worker() {
    while (sent < count) {
      sent++;
      const start = performance.now();
      const res = await fetch(target);
      await res.text();
      if (!res.ok) throw new Error(`${target} answered ${res.status}`);
      latencies.push(performance.now() - start);
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  return latencies;
}

function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)];
}

const ms = (x) => `${x < 10 ? x.toFixed(1) : x.toFixed(0)} ms`.padStart(9);

// --- the replicas and the gateway ---------------------------------------

const replicas = {
  a: await startReplica('a', 1),
  b: await startReplica('b', 2),
  c: await startReplica('c', 3),
};

const proxy = redundantProxy({
  upstreams: Object.entries(replicas).map(([id, server]) => ({ id, url: url(server) })),
  // copies: 3 by default (one per upstream), all sent at once.
});
const app = new Koa();
app.use(proxy);
const gateway = await new Promise((resolve) => {
  const server = app.listen(0, '127.0.0.1', () => resolve(server));
});

console.log(`
redundant-proxy demo
  Three replicas (a, b, c) answer 90% of requests in 1-3 ms but 10% in 50-150 ms.
  We send ${REQUESTS} requests (${CONCURRENCY === 1 ? 'one at a time' : `${CONCURRENCY} at a time`}) straight to replica a, then ${REQUESTS} through a
  Koa gateway that sends each request to all three and answers with the first reply.
  The slow answers vanish from the gateway's tail: a request is only slow if all three are.
`);

// --- direct vs. through the gateway -------------------------------------

await load(url(replicas.a, '/warmup'), WARMUP);
const direct = await load(url(replicas.a, '/api/item'), REQUESTS);

await load(url(gateway, '/warmup'), WARMUP);
const before = proxy.metrics();
const raced = await load(url(gateway, '/api/item'), REQUESTS);
// A race is counted once its losers are done (they get a few ms of grace to
// answer, so that their connections can be reused): wait for the last ones.
let after = proxy.metrics();
for (let i = 0; i < 50 && after.requests - before.requests < REQUESTS; i++) {
  await new Promise((resolve) => setTimeout(resolve, 10));
  after = proxy.metrics();
}

console.log('                               p50       p95       p99');
for (const [label, values] of [
  ['straight to replica a', direct],
  ['through the racing gateway', raced],
]) {
  console.log(`  ${label.padEnd(26)}${ms(percentile(values, 0.5))} ${ms(percentile(values, 0.95))} ${ms(percentile(values, 0.99))}`);
}
const p99Gain = percentile(direct, 0.99) / percentile(raced, 0.99);
const hop = percentile(raced, 0.5) - percentile(direct, 0.5);
const median =
  hop >= 0
    ? `the median pays for the extra hop (+${hop.toFixed(1)} ms)`
    : `even the median is ${(-hop).toFixed(1)} ms faster (the fastest of three draws beats the extra hop)`;
console.log(`\n  p99 is ${p99Gain.toFixed(p99Gain < 10 ? 1 : 0)}× lower through the gateway; ${median}.`);

// --- what it cost: the proxy's own metrics, for the requests above -------

const requests = after.requests - before.requests;
const copies = after.copiesSent - before.copiesSent;
console.log(`\n  proxy.metrics() for those ${requests} requests:`);
console.log(`    copies per request: ${(copies / requests).toFixed(2)} (one per replica; once one answers, the others are stopped)`);
for (const id of Object.keys(replicas)) {
  const won = after.upstreams[id].won - before.upstreams[id].won;
  const sent = after.upstreams[id].sent - before.upstreams[id].sent;
  console.log(`    replica ${id}: won ${String(won).padStart(3)} of ${sent} races (${((100 * won) / sent).toFixed(0)}%)`);
}

// --- clean up ------------------------------------------------------------

await proxy.close();
gateway.closeAllConnections();
await new Promise((resolve) => gateway.close(resolve));
for (const server of Object.values(replicas)) {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
}
console.log('\n  done: everything closed.\n');
