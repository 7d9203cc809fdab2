// The store traffic of raced requests (copies 3) against a redis-server of
// its own, as fast as one process makes it, 64 requests at a time: what
// scenario f measures at the limit, alone, for comparing two builds of the
// library side by side on the same host (one build's dist against another's).
//
//   node bench/saturation.mjs [--dist DIR] [--seconds N] [--rate N] [--max-delay MS] [--instructions] read|update
//
// `--rate N`: N requests a second, started one at a time and spread evenly
// (light load, as from many clients) instead of as fast as they go.
// `--max-delay MS`: the stores' `batch.maxDelay` (default 0).
// `--instructions`: redis-server runs under valgrind's callgrind, which counts
// the instructions it executes (its own and its libraries', not the kernel's):
// Redis's work per request, the same from run to run within a fraction of 1%
// (the batches vary a little) whatever else the host does, where its CPU time
// on a shared host is not. Redis runs some fifty times slower there, so the
// requests/s and CPU figures mean nothing then.
//
// A read records three copies (three stores) and one adoption (a fourth); an
// update records three copies, claims from the three (one is granted and
// confirms, the others wait and learn they lost) and records the adoption.
// Prints requests/s, Redis's share of a core and its CPU per request (INFO
// cpu), Redis commands per request (INFO commandstats, commands inside
// scripts included) and the script calls per request by script.

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Redis } from 'ioredis';
import { storeTraffic } from './store-cost.js';

const argv = process.argv.slice(2);
const opt = (name, fallback) => {
  const at = argv.indexOf(name);
  return at === -1 ? fallback : argv.splice(at, 2)[1];
};
const dist = resolve(opt('--dist', new URL('../dist', import.meta.url).pathname));
const seconds = Number(opt('--seconds', '5'));
const rate = Number(opt('--rate', '0'));
const maxDelay = Number(opt('--max-delay', '0'));
const at = argv.indexOf('--instructions');
const instructions = at !== -1;
if (instructions) argv.splice(at, 1);
const kind = argv[0] ?? 'update';
if (!['read', 'update'].includes(kind) || !(seconds > 0 && seconds <= 60) || !(rate >= 0 && rate <= 20_000) || !(Number.isInteger(maxDelay) && maxDelay >= 0 && maxDelay <= 1000)) {
  console.error('usage: node bench/saturation.mjs [--dist DIR] [--seconds 1-60] [--rate 0-20000] [--max-delay 0-1000] [--instructions] read|update');
  process.exit(2);
}
const lib = await import(pathToFileURL(`${dist}/index.js`).href);
const { RedisSessionStore } = await import(pathToFileURL(`${dist}/redis.js`).href);

const port = await new Promise((done) => {
  const probe = createServer().listen(0, '127.0.0.1', () => {
    const { port: p } = probe.address();
    probe.close(() => done(p));
  });
});
const redisArgs = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'];
const profiles = instructions ? mkdtempSync(join(tmpdir(), 'rp-callgrind-')) : null;
const server = instructions
  ? spawn('valgrind', ['--tool=callgrind', `--callgrind-out-file=${profiles}/callgrind.out`, 'redis-server', ...redisArgs], { stdio: 'ignore' })
  : spawn('redis-server', redisArgs, { stdio: 'ignore' });
const admin = new Redis({ port, lazyConnect: true, retryStrategy: () => 50 });
admin.on('error', () => undefined); // refused while redis-server starts: the loop below tries again
for (let i = 0; i < (instructions ? 400 : 100); i++) {
  try {
    await admin.connect();
    break;
  } catch {
    await new Promise((r) => setTimeout(r, 50));
  }
}

const clients = [];
const stores = [];
const scriptCalls = {};
for (let i = 0; i < 4; i++) {
  const client = new Redis({ port, maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true });
  await client.connect();
  const evalsha = client.evalsha.bind(client);
  client.evalsha = (sha, numKeys, ...rest) => {
    scriptCalls[sha.slice(0, 8)] = (scriptCalls[sha.slice(0, 8)] ?? 0) + 1;
    return evalsha(sha, numKeys, ...rest);
  };
  clients.push(client);
  stores.push(new RedisSessionStore({ client, prefix: 'sat:', batch: { maxDelay } }));
}

const run = (secs) => storeTraffic(lib, stores, kind, secs, rate);

const cpu = async () => {
  const text = await admin.info('cpu');
  const get = (k) => Number(new RegExp(`^${k}:([\\d.]+)`, 'm').exec(text)[1]);
  return (get('used_cpu_sys') + get('used_cpu_user')) * 1e6;
};

await run(1); // warm-up: scripts loaded, inboxes subscribed
await admin.config('RESETSTAT');
for (const k of Object.keys(scriptCalls)) delete scriptCalls[k];
// callgrind counts from here (its counters zeroed) to the dump after the run.
if (instructions) execFileSync('callgrind_control', ['-z', String(server.pid)], { stdio: 'ignore' });
const cpu0 = await cpu();
const t0 = performance.now();
const { requests: done, failed } = await run(seconds);
const elapsed = (performance.now() - t0) / 1000;
const micros = (await cpu()) - cpu0;
if (instructions) {
  execFileSync('callgrind_control', ['-d', String(server.pid)], { stdio: 'ignore' });
  const dump = readFileSync(`${profiles}/callgrind.out.1`, 'utf8');
  const total = Number(/^(?:summary|totals): (\d+)/m.exec(dump)[1]);
  console.log(`${kind}: ${done} requests, ${failed} failed; Redis executed ${Math.round(total / done).toLocaleString('en-US')} instructions per ${kind} (callgrind, ${total.toLocaleString('en-US')} in all)`);
} else {
  console.log(`${kind}: ${Math.round(done / elapsed)} requests/s, ${failed} failed, Redis at ${((100 * micros) / (elapsed * 1e6)).toFixed(0)}% of a core, ${(micros / done).toFixed(1)} µs per ${kind}`);
}
const stats = await admin.info('commandstats');
const commands = [...stats.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)].filter((m) => !['info', 'config'].includes(m[1])).map((m) => `${m[1].toUpperCase()} ${(m[2] / done).toFixed(2)}`);
console.log(`  commands per ${kind}: ${commands.join(', ')}`);
const usec = [...stats.matchAll(/^cmdstat_(evalsha|eval):calls=\d+,usec=(\d+)/gm)].reduce((sum, m) => sum + Number(m[2]), 0);
console.log(`  time inside script calls: ${(usec / done).toFixed(1)} µs per ${kind}`);
console.log(`  script calls per ${kind}: ${Object.entries(scriptCalls).map(([sha, n]) => `${sha} ${(n / done).toFixed(2)}`).join(', ')}`);

for (const store of stores) await store.close();
for (const client of clients) client.disconnect();
admin.disconnect();
server.kill();
if (profiles) {
  await new Promise((r) => server.once('exit', r));
  rmSync(profiles, { recursive: true, force: true });
}
