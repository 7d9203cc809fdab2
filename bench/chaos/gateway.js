// The gateway of the chaos run (bench/chaos/run.js), in its own process:
// redundantProxy on node:http, RedisSessionStore, Idempotency-Key on (the
// default). It counts what the proxy reports and answers { type: 'stats' }
// and { type: 'metrics' } over IPC; it logs nothing per request.
import http from 'node:http';
import { Redis } from 'ioredis';

const distUrl = process.env.CHAOS_DIST ?? new URL('../../dist/', import.meta.url).href;
const { redundantProxy } = await import(new URL('index.js', distUrl).href);
const { RedisSessionStore } = await import(new URL('redis.js', distUrl).href);

const { UPSTREAMS, REDIS_PORT, SECRET, PREFIX, TIMEOUT } = process.env;

process.on('disconnect', () => process.exit(0));

const redis = new Redis({ port: Number(REDIS_PORT), host: '127.0.0.1', maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true });
redis.on('error', () => {});
await redis.connect();
const store = new RedisSessionStore({ client: redis, prefix: PREFIX });
const proxy = redundantProxy({
  upstreams: JSON.parse(UPSTREAMS),
  store,
  secret: SECRET,
  timeout: Number(TIMEOUT),
  idempotency: {},
  // Faster than the defaults (30 s, up to 5 min), so that a replica killed
  // and restarted within a second is back in the race within seconds; the
  // run is only a few minutes long.
  ejection: { baseEjectionTime: 3000, maxEjectionTime: 10_000 },
});

const stats = { races: 0, outcomes: {}, committed: 0, errors: {}, cancelled: 0, ejections: 0, errorSamples: [] };
// What happened to each request id (kept in memory, bounded; never logged),
// so that the run can show the story of a transfer it finds suspicious: every
// race run under the id (a resumed retry runs under the first attempt's id)
// and every store error reported for it.
const history = new Map();
const remember = (requestId, entry) => {
  if (!requestId) return;
  let list = history.get(requestId);
  if (!list) {
    if (history.size >= 100_000) history.delete(history.keys().next().value);
    history.set(requestId, (list = []));
  }
  if (list.length < 50) list.push(entry);
};
proxy.on('race:start', (r) => remember(r.requestId, { start: Date.now() }));
proxy.on('race:end', (r) => {
  stats.races++;
  stats.outcomes[r.outcome] = (stats.outcomes[r.outcome] ?? 0) + 1;
  if (r.committed) stats.committed++;
  remember(r.requestId, {
    race: r.outcome,
    startedAt: Date.now() - Math.round(r.duration),
    ms: Math.round(r.duration),
    status: r.status,
    servedBy: r.servedBy,
    committed: r.committed,
    copies: r.copies.map((c) => `${c.upstream}:${c.outcome}${c.status ? ` ${c.status}` : ''}${c.error ? ` (${c.error})` : ''}`),
  });
});
proxy.on('copy:cancelled', () => void stats.cancelled++);
proxy.on('upstream:ejected', () => void stats.ejections++);
proxy.on('error', (e) => {
  stats.errors[e.source] = (stats.errors[e.source] ?? 0) + 1;
  remember(e.requestId, { error: e.source, at: Date.now(), message: String(e.error?.message ?? e.error).slice(0, 200) });
  if (e.source !== 'store' && stats.errorSamples.length < 5) {
    stats.errorSamples.push(`${e.requestId ?? '-'} ${e.source}: ${String(e.error?.stack ?? e.error).slice(0, 300)}`);
  }
});

const server = http.createServer((req, res) => void proxy.handler(req, res));
server.keepAliveTimeout = 10_000;
server.listen(0, '127.0.0.1', () => process.send?.({ type: 'ready', port: server.address().port }));

process.on('message', async (m) => {
  if (m?.type === 'stats') process.send?.({ type: 'stats', id: m.id, stats });
  else if (m?.type === 'history') process.send?.({ type: 'history', id: m.id, history: Object.fromEntries((m.ids ?? []).map((rid) => [rid, history.get(rid) ?? []])) });
  else if (m?.type === 'metrics') process.send?.({ type: 'metrics', id: m.id, metrics: proxy.metrics() });
  else if (m?.type === 'close') {
    server.closeAllConnections();
    server.close();
    await Promise.race([proxy.close(), new Promise((r) => setTimeout(r, 3000))]);
    await store.close().catch(() => {});
    redis.disconnect();
    process.exit(0);
  }
});
