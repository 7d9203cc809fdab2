// Benchmark upstreams, run in their own process (child_process.fork) so that
// the gateway's CPU is measured on its own.
//
// argv[2]: JSON { servers: [{ id, seed }], model: 'fast' | 'heavy' }
//   fast:  every answer at once (tiny JSON), for throughput scenarios;
//   heavy: each request to /work* waits a latency drawn from bench/model.js
//          with this server's own seeded PRNG; any other path answers at once
//          (used for warm-up, so that warm-up does not consume draws).
// Tells the parent { type: 'ready', ports: { id: port } }; answers
// { type: 'stats' } with the requests and TCP connections each server saw.

import http from 'node:http';
import { heavyTail, mulberry32, summarize } from './model.js';

const config = JSON.parse(process.argv[2] ?? '{}');
const servers = [];

for (const { id, seed } of config.servers) {
  const rng = mulberry32(seed);
  const stats = { requests: 0, connections: 0 };
  const slop = [];
  const fastBody = Buffer.from(JSON.stringify({ ok: true, upstream: id }));
  const server = http.createServer((req, res) => {
    stats.requests++;
    if (config.model === 'heavy' && req.url.startsWith('/work')) {
      const ms = heavyTail(rng);
      const t0 = performance.now();
      setTimeout(() => {
        slop.push(performance.now() - t0 - ms);
        if (res.destroyed) return; // the proxy stopped this copy
        const body = `{"ok":true,"upstream":"${id}","ms":${ms.toFixed(3)}}`;
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      }, ms);
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': fastBody.length });
    res.end(fastBody);
  });
  server.on('connection', () => stats.connections++);
  server.keepAliveTimeout = 30_000;
  servers.push({ id, server, stats, slop });
}

await Promise.all(servers.map(({ server }) => new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))));
process.send({ type: 'ready', ports: Object.fromEntries(servers.map(({ id, server }) => [id, server.address().port])) });

process.on('message', (msg) => {
  if (msg?.type === 'stats') {
    const cpu = process.cpuUsage();
    process.send({
      type: 'stats',
      id: msg.id,
      cpuMicros: cpu.user + cpu.system,
      stats: Object.fromEntries(servers.map(({ id, stats, slop }) => [id, { ...stats, timerSlop: summarize(slop) }])),
    });
  } else if (msg?.type === 'close') {
    for (const { server } of servers) server.closeAllConnections?.();
    process.exit(0);
  }
});
// The parent died: do not linger.
process.on('disconnect', () => process.exit(0));
