// What completing an Idempotency-Key before the answer's last byte costs an
// update: three in-process Koa replicas running the worker (each update
// commits through commitOnce, no database), the proxy in front, the same
// updates with and without a key, alternated one by one so that both see
// the same machine. With the memory store and with Redis (127.0.0.1:6379,
// a prefix of its own, cleaned up). Bounded: ROUNDS × 2 sequential requests
// per store. `node bench/idempotency.js` after `npm run build`.

import http from 'node:http';
import { randomUUID } from 'node:crypto';
import Koa from 'koa';
import { Redis } from 'ioredis';
import { request, Agent } from 'undici';
import { MemorySessionStore, redundantProxy, redundantWorker } from '../dist/index.js';
import { RedisSessionStore } from '../dist/redis.js';

const ROUNDS = Number(process.argv.find((a) => a.startsWith('--rounds='))?.slice(9) ?? 1500);
const SECRET = 'idempotency-bench-secret-0123';

function listen(listener) {
  const server = http.createServer(listener);
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function fleet(store) {
  const servers = [];
  for (const id of ['a', 'b', 'c']) {
    const app = new Koa();
    app.use(redundantWorker({ id, store, secret: SECRET }));
    app.use(async (ctx) => {
      if (ctx.method === 'GET') return void (ctx.body = { ok: true });
      await ctx.state.redundant.commitOnce(async () => undefined);
      ctx.status = 201;
      ctx.body = { ok: true, by: id };
    });
    servers.push({ id, server: await listen(app.callback()) });
  }
  const proxy = redundantProxy({ upstreams: servers.map(({ id, server }) => ({ id, url: `http://127.0.0.1:${server.address().port}` })), store, secret: SECRET });
  const gateway = await listen(proxy.handler);
  return { servers, proxy, gateway, url: `http://127.0.0.1:${gateway.address().port}` };
}

function pct(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function measure(name, store) {
  const f = await fleet(store);
  const agent = new Agent({ keepAliveTimeout: 2000 });
  const send = async (headers) => {
    const t0 = process.hrtime.bigint();
    const res = await request(`${f.url}/order`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json', ...headers }, dispatcher: agent });
    await res.body.dump();
    if (res.statusCode !== 201) throw new Error(`${name}: status ${res.statusCode}`);
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  // The proxy copies updates once it has seen the workers.
  for (let i = 0; i < 30; i++) await (await request(`${f.url}/warm`, { dispatcher: agent })).body.dump();
  for (let i = 0; i < 200; i++) await send(i % 2 ? { 'idempotency-key': randomUUID() } : {});
  const plain = [];
  const keyed = [];
  for (let i = 0; i < ROUNDS; i++) {
    plain.push(await send({}));
    keyed.push(await send({ 'idempotency-key': randomUUID() }));
  }
  plain.sort((a, b) => a - b);
  keyed.sort((a, b) => a - b);
  await agent.close();
  await f.proxy.close();
  await new Promise((r) => f.gateway.close(r));
  for (const { server } of f.servers) {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
  const row = (p) => ({ plain: pct(plain, p), keyed: pct(keyed, p) });
  return { store: name, rounds: ROUNDS, p50: row(50), p90: row(90), p99: row(99) };
}

const results = [];
const memory = new MemorySessionStore({ max: 100_000 });
results.push(await measure('memory', memory));
await memory.close();
const client = new Redis({ host: '127.0.0.1', port: 6379, maxRetriesPerRequest: 1, enableOfflineQueue: true });
client.on('error', () => undefined);
const prefix = `bench-idem-${process.pid}:`;
const redis = new RedisSessionStore({ client, prefix });
results.push(await measure('redis', redis));
await redis.close();
let cursor = '0';
do {
  const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
  cursor = next;
  if (keys.length) await client.del(...keys);
} while (cursor !== '0');
client.disconnect();

console.log(`Idempotency-Key cost per update, ${ROUNDS} of each, alternated (ms):`);
console.log('store   pct   no key   with key   extra');
for (const r of results) {
  for (const p of ['p50', 'p90', 'p99']) {
    const { plain, keyed } = r[p];
    console.log(`${r.store.padEnd(7)} ${p.padEnd(5)} ${plain.toFixed(3).padStart(7)}  ${keyed.toFixed(3).padStart(8)}  ${(keyed - plain).toFixed(3).padStart(6)}`);
  }
}
if (process.argv.includes('--json')) console.log(JSON.stringify(results));
