// One benchmark gateway, run in its own process (child_process.fork) so that
// one contestant's garbage collection or leftover sockets never hurt another,
// and so that process.cpuUsage() measures the gateway alone.
//
// argv[2]: JSON { kind, upstreams: [{ id, url }], options }
//   kind: ours-koa | ours-express | ours-node | hpm-express | fastify-http-proxy
//         | express-alone | mini-race (reference points)
//   options: passed to redundantProxy() (ours-* only)
// Messages: { type: 'reset' } starts a measurement window (CPU, counters);
// { type: 'stats' } answers what the window saw; { type: 'close' } exits.

import http from 'node:http';
import { pathToFileURL } from 'node:url';
import { summarize } from './model.js';

const config = JSON.parse(process.argv[2] ?? '{}');
const { kind, upstreams, options = {} } = config;

let served = 0;
/** Per request: ms from the 'request' event to the response's 'finish' (the gateway's own view). */
let inGateway = [];
function count(_req, res) {
  served++;
  const t0 = performance.now();
  res.once('finish', () => inGateway.push(performance.now() - t0));
}
let proxy = null;
let races = null;
let cpuStart = process.cpuUsage();
let wallStart = performance.now();

function resetRaces() {
  races = { requests: 0, copiesSent: 0, hedged: 0, outcomes: {}, copyOutcomes: {}, durations: [], winnerLatencies: [] };
}
resetRaces();

async function start() {
  if (kind.startsWith('ours-')) {
    // bench/run.js passes a snapshot of dist/ taken when the run started.
    const { redundantProxy } = process.env.RP_BENCH_DIST
      ? await import(pathToFileURL(`${process.env.RP_BENCH_DIST}/index.js`).href)
      : await import('../dist/index.js');
    proxy = redundantProxy({ upstreams, ...options });
    proxy.on('race:end', (report) => {
      races.requests++;
      races.outcomes[report.outcome] = (races.outcomes[report.outcome] ?? 0) + 1;
      races.durations.push(report.duration);
      for (const c of report.copies) {
        races.copyOutcomes[c.outcome] = (races.copyOutcomes[c.outcome] ?? 0) + 1;
        if (c.sentAt === null) continue;
        races.copiesSent++;
        if (c.hedged) races.hedged++;
        if (c.outcome === 'won' && c.latency !== null) races.winnerLatencies.push(c.sentAt + c.latency);
      }
    });
    proxy.on('error', () => {});
  }
  let server;
  switch (kind) {
    case 'ours-koa': {
      const { default: Koa } = await import('koa');
      const app = new Koa();
      app.use(proxy);
      server = http.createServer(app.callback());
      break;
    }
    case 'ours-express': {
      const { default: express } = await import('express');
      const app = express();
      app.disable('x-powered-by');
      app.use(proxy);
      server = http.createServer(app);
      break;
    }
    case 'ours-node':
      server = http.createServer(proxy.handler);
      break;
    case 'mini-race':
      server = http.createServer(await miniRace(upstreams, options));
      break;
    case 'express-alone': {
      // A reference point, not a proxy: Express 5 answering the same tiny
      // JSON itself, the floor of any Express middleware on this machine.
      const { default: express } = await import('express');
      const app = express();
      app.disable('x-powered-by');
      app.disable('etag');
      const body = Buffer.from(JSON.stringify({ ok: true, upstream: 'express' }));
      app.use((req, res) => {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
        res.end(body);
      });
      server = http.createServer(app);
      break;
    }
    case 'hpm-express': {
      const { default: express } = await import('express');
      const { createProxyMiddleware } = await import('http-proxy-middleware');
      const app = express();
      app.disable('x-powered-by');
      app.use(createProxyMiddleware({ target: upstreams[0].url, agent: new http.Agent({ keepAlive: true, maxSockets: 256 }) }));
      server = http.createServer(app);
      break;
    }
    case 'fastify-http-proxy': {
      const { default: Fastify } = await import('fastify');
      const { default: fastifyHttpProxy } = await import('@fastify/http-proxy');
      const app = Fastify({ logger: false });
      await app.register(fastifyHttpProxy, { upstream: upstreams[0].url });
      await app.listen({ port: 0, host: '127.0.0.1' });
      server = app.server;
      server.on('request', count);
      return server.address().port;
    }
    default:
      throw new Error(`unknown gateway kind ${kind}`);
  }
  server.on('request', count);
  server.keepAliveTimeout = 30_000;
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server.address().port;
}

/**
 * A reference racer, not a product: node:http + undici, every copy at once,
 * the first response head wins and is piped to the client. It has none of
 * the library's features (ids, headers, bookkeeping, events, timeouts), and
 * shows the floor this machine and harness allow. `abortLosers: false` lets
 * the losing copies finish and drains them, which keeps their connections.
 */
async function miniRace(list, { abortLosers = true } = {}) {
  const { Pool } = await import('undici');
  const pools = list.map((u) => new Pool(u.url, { connections: 256, pipelining: 1 }));
  return (req, res) => {
    let won = false;
    const t0 = performance.now();
    const controllers = pools.map(() => new AbortController());
    pools.forEach((pool, i) => {
      pool.request({ path: req.url, method: req.method, headers: { 'x-forwarded-for': req.socket.remoteAddress }, signal: controllers[i].signal }).then(
        ({ statusCode, headers, body }) => {
          if (won) return void body.dump().catch(() => {});
          won = true;
          races.winnerLatencies.push(performance.now() - t0);
          if (abortLosers) controllers.forEach((c, j) => j !== i && c.abort());
          res.writeHead(statusCode, { 'content-type': headers['content-type'] ?? 'application/octet-stream', 'content-length': headers['content-length'] });
          body.pipe(res);
        },
        () => {},
      );
    });
  };
}

const port = await start();
process.send({ type: 'ready', port });

process.on('message', async (msg) => {
  switch (msg?.type) {
    case 'reset':
      served = 0;
      inGateway = [];
      resetRaces();
      cpuStart = process.cpuUsage();
      wallStart = performance.now();
      process.send({ type: 'reset', id: msg.id });
      break;
    case 'stats': {
      const cpu = process.cpuUsage(cpuStart);
      process.send({
        type: 'stats',
        id: msg.id,
        served,
        wallMs: performance.now() - wallStart,
        cpuMicros: cpu.user + cpu.system,
        cpuSystemMicros: cpu.system,
        races: proxy ? { ...races, durations: summarize(races.durations), winnerLatencies: summarize(races.winnerLatencies) } : kind === 'mini-race' ? { winnerLatencies: summarize(races.winnerLatencies) } : null,
        metrics: proxy ? proxy.metrics() : null,
        inGateway: summarize(inGateway),
      });
      break;
    }
    case 'close':
      if (proxy) await Promise.race([proxy.close(), new Promise((r) => setTimeout(r, 2000))]);
      process.exit(0);
      break;
    default:
  }
});
process.on('disconnect', () => process.exit(0));
