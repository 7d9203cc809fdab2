import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Redis } from 'ioredis';
import { RedisSessionStore } from '../lib/redis.js';
import { testClient } from './helpers/client.js';
import { startRedisServer, type RedisServer } from './helpers/redis-server.js';
import { eventually, startReplica, type Replica } from './helpers/replica.js';
import { readJson } from './helpers/transfer.js';
import { after, startUpstream } from './helpers/upstream.js';

// `dist/cli.js` as an operator runs it (dist/ is built by `npm test` before
// jest runs): in its own process, in front of real worker replicas that
// share a real redis-server with it.

const SECRET = 'cli-test-secret-0123456789abcdef';

function run(args: string[], env: Record<string, string> = {}) {
  const child = spawn(process.execPath, ['dist/cli.js', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, REDUNDANT_PROXY_SECRET: '', ...env } });
  let out = '';
  let err = '';
  child.stdout.on('data', (c) => (out += c));
  child.stderr.on('data', (c) => (err += c));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  /** The gateway's URL (and the metrics server's, when there is one), once it said so on stderr. */
  const started = async () => {
    await eventually(() => {
      if (child.exitCode !== null) throw new Error(`exited ${child.exitCode}: ${err}`);
      return /listening on (http:\/\/\S+)/.test(err);
    }, 10_000);
    if (args.includes('--metrics-port')) await eventually(() => /metrics on (http:\/\/\S+)/.test(err), 5000);
    return { url: /listening on (http:\/\/\S+)/.exec(err)![1]!, metrics: /metrics on (http:\/\/\S+)/.exec(err)?.[1] };
  };
  /** stdout's lines, each parsed as JSON (a line that is not JSON fails the test). */
  const lines = () =>
    out
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { child, exited, started, lines, out: () => out, err: () => err };
}

describe('npx redundant-proxy in front of worker replicas on Redis', () => {
  let redis: RedisServer;
  let client: Redis;
  let store: RedisSessionStore;
  let dir: string;
  const replicas: Replica[] = [];
  const commits: Array<{ requestId: string; by: string; fence: number }> = [];
  let slowArrived: () => void = () => undefined;
  let gateway: ReturnType<typeof run>;
  let url: string;
  let metricsUrl: string;
  const http = testClient();

  beforeAll(async () => {
    redis = await startRedisServer();
    client = new Redis({ host: redis.host, port: redis.port, maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true });
    await client.connect();
    store = new RedisSessionStore({ client });
    dir = await mkdtemp(join(tmpdir(), 'rp-cli-'));
    await writeFile(join(dir, 'secret'), `${SECRET}\n`);
    for (const [id, kind] of [['a', 'express'], ['b', 'koa'], ['c', 'express']] as const) {
      replicas.push(
        await startReplica(kind, { id, store, secret: SECRET }, async (h, req) => {
          const path = req.url!.split('?')[0];
          if (path === '/who') {
            // b answers first.
            await new Promise((r) => setTimeout(r, id === 'b' ? 1 : 150));
            return { body: { from: id } };
          }
          // Every replica's answer is a 503: the race waits for all three heads, so the gateway learns they run the worker.
          if (path === '/warm') return { status: 503, body: { warm: id } };
          if (path === '/visit') {
            const count = ((h.session.data.count as number | undefined) ?? 0) + 1;
            h.session.data.count = count;
            return { body: { count, by: id } };
          }
          if (path === '/transfer') {
            const t = await readJson<{ amount: number }>(req);
            const fence = await h.commitOnce((fence) => {
              commits.push({ requestId: h.requestId, by: id, fence });
              return fence;
            });
            return { body: { ok: true, amount: t.amount, by: id, fence } };
          }
          if (path === '/slow') {
            slowArrived();
            await new Promise((r) => setTimeout(r, 400));
            return { body: { slow: id } };
          }
          return { status: 404, body: {} };
        }),
      );
    }
    gateway = run([
      ...replicas.flatMap((r) => ['--upstream', `${r.id}=${r.url}`]),
      '--port', '0',
      '--redis', `redis://${redis.host}:${redis.port}`,
      '--secret-file', join(dir, 'secret'),
      '--metrics-port', '0',
    ]);
    ({ url, metrics: metricsUrl } = (await gateway.started()) as { url: string; metrics: string });
  });

  afterAll(async () => {
    if (gateway.child.exitCode === null) {
      gateway.child.kill('SIGKILL');
      await gateway.exited;
    }
    await http.close();
    for (const r of replicas) await r.close();
    await store.close();
    client.disconnect();
    await redis.stop();
    await rm(dir, { recursive: true, force: true });
  });

  /** The access log line of a request, once written (a race reports after its losers are stopped). */
  const logLine = (requestId: unknown) => eventually(() => gateway.lines().find((l) => l.requestId === requestId));

  it('races reads across the named upstreams (their workers accept the signed copies) and logs each as one JSON line', async () => {
    const res = await http.send(`${url}/who?x=1`);
    expect(res.status).toBe(200);
    expect(res.json()).toEqual({ from: 'b' });
    expect(res.headers['x-redundant-served-by']).toBe('b');
    const line = await logLine(res.headers['x-request-id']);
    expect(line).toEqual({
      time: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/),
      requestId: res.headers['x-request-id'],
      method: 'GET',
      path: '/who?x=1',
      status: 200,
      servedBy: 'b',
      copies: 3,
      durationMs: expect.any(Number),
      outcome: 'won',
    });
    expect(Math.abs(Date.parse(line.time as string) - Date.now())).toBeLessThan(10_000);
    expect(line.durationMs as number).toBeGreaterThan(0);
    // The secret reached the gateway from the file and went nowhere else.
    expect(gateway.out() + gateway.err()).not.toContain(SECRET);
  });

  it('keeps a session across requests in the Redis store, whichever replica serves them', async () => {
    const first = await http.send(`${url}/visit`);
    expect(first.json()).toMatchObject({ count: 1 });
    const cookie = String(first.headers['set-cookie']).split(';')[0]!;
    const sessionId = cookie.split('=')[1]!;
    for (const n of [2, 3]) {
      const res = await http.send(`${url}/visit`, { headers: { cookie } });
      expect(res.json()).toMatchObject({ count: n });
    }
    // In Redis, where the gateway promoted the adopted copies' changes.
    expect((await store.getSession(sessionId))?.data).toEqual({ count: 3 });
  });

  it('lets exactly one copy of an update commit, and logs the copies it sent', async () => {
    const warm = await http.send(`${url}/warm`);
    expect(warm.status).toBe(503);
    const res = await http.send(`${url}/transfer`, { method: 'POST', headers: { 'content-type': 'application/json', 'idempotency-key': '"t-1"' }, body: JSON.stringify({ amount: 5 }) });
    expect(res.status).toBe(200);
    const body = res.json();
    const mine = commits.filter((c) => c.requestId === res.headers['x-request-id']);
    expect(mine).toHaveLength(1);
    expect(body).toEqual({ ok: true, amount: 5, by: mine[0]!.by, fence: mine[0]!.fence });
    expect(res.headers['x-redundant-served-by']).toBe(mine[0]!.by);
    // A Redis fence is past a 32-bit integer: a database column for it must be a bigint.
    expect(mine[0]!.fence).toBeGreaterThan(2 ** 31);
    const line = await logLine(res.headers['x-request-id']);
    expect(line).toMatchObject({ method: 'POST', path: '/transfer', status: 200, servedBy: mine[0]!.by, copies: 3, outcome: 'won' });
    // A retry with the key is replayed by the gateway without a race: still one commit.
    const again = await http.send(`${url}/transfer`, { method: 'POST', headers: { 'content-type': 'application/json', 'idempotency-key': '"t-1"' }, body: JSON.stringify({ amount: 5 }) });
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.json()).toEqual(body);
    expect(commits.filter((c) => c.requestId === res.headers['x-request-id'])).toHaveLength(1);
    const replayed = await eventually(() => gateway.lines().find((l) => l.outcome === 'replayed'));
    expect(replayed).toMatchObject({ method: 'POST', path: '/transfer', status: 200, servedBy: null, copies: 0 });
  });

  it('serves the Prometheus text of its races on the metrics port', async () => {
    const res = await http.send(`${metricsUrl}`);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    const won = /^redundant_proxy_requests_total\{outcome="won"\} (\d+)$/m.exec(res.text);
    expect(Number(won?.[1])).toBeGreaterThanOrEqual(5);
    expect(res.text).toMatch(/^redundant_proxy_copies_total\{upstream="b",outcome="won"\} [1-9]\d*$/m);
    expect((await http.send(metricsUrl.replace(/\/metrics$/, '/other'))).status).toBe(404);
  });

  it('on SIGTERM stops accepting, still answers and logs the request in flight, and exits 0', async () => {
    const arrived = new Promise<void>((r) => (slowArrived = r));
    const pending = http.send(`${url}/slow`);
    await arrived;
    gateway.child.kill('SIGTERM');
    await eventually(() => gateway.err().includes('SIGTERM: finishing'));
    // A new connection is refused while the one in flight is still served.
    const late = testClient();
    await expect(late.send(`${url}/who`)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await late.close();
    const res = await pending;
    expect(res.status).toBe(200);
    expect(res.json()).toHaveProperty('slow');
    expect(await gateway.exited).toBe(0);
    expect(gateway.lines().find((l) => l.requestId === res.headers['x-request-id'])).toMatchObject({ path: '/slow', status: 200, outcome: 'won' });
  });
});

describe('npx redundant-proxy (in-memory store)', () => {
  it('runs a standalone gateway on plain URLs, without an access log when told so, and stops cleanly on SIGTERM', async () => {
    const a = await startUpstream(after(200, 200, { from: 'a' }));
    const b = await startUpstream(after(1, 200, { from: 'b' }));
    const p = run(['--upstream', a.url, '--upstream', b.url, '--port', '0', '--access-log', 'off']);
    const own = testClient();
    try {
      const { url } = await p.started();
      const res = await own.send(`${url}/x`);
      expect(res.status).toBe(200);
      expect(res.json()).toEqual({ from: 'b' });
      expect(res.headers['x-redundant-served-by']).toBe('upstream-2');
      await own.close();
      p.child.kill('SIGTERM');
      expect(await p.exited).toBe(0);
      expect(p.out()).toBe('');
    } finally {
      await own.close();
      if (p.child.exitCode === null) p.child.kill('SIGKILL');
      await a.close();
      await b.close();
    }
  });

  it('logs a request cut off at shutdown (past --shutdown-timeout), with no status, and exits 1', async () => {
    const a = await startUpstream(after(5000, 200, { late: true }));
    const p = run(['--upstream', `one=${a.url}`, '--port', '0', '--shutdown-timeout', '200']);
    const own = testClient();
    try {
      const { url } = await p.started();
      const pending = own.send(`${url}/slow`).catch((err: unknown) => err);
      await eventually(() => a.seen.length === 1);
      p.child.kill('SIGTERM');
      expect(await p.exited).toBe(1);
      await pending;
      expect(p.lines()).toEqual([
        expect.objectContaining({ requestId: expect.any(String), method: 'GET', path: '/slow', status: null, servedBy: null, copies: 1, outcome: 'cut-off' }),
      ]);
    } finally {
      await own.close();
      if (p.child.exitCode === null) p.child.kill('SIGKILL');
      await a.close();
    }
  });

  it('--quorum K answers with what K upstreams answered alike', async () => {
    const ups = [await startUpstream(after(1, 200, { v: 'odd one' })), await startUpstream(after(20, 200, { v: 'agreed' })), await startUpstream(after(40, 200, { v: 'agreed' }))];
    const p = run([...ups.flatMap((u) => ['--upstream', u.url]), '--port', '0', '--quorum', '2', '--no-ejection']);
    const own = testClient();
    try {
      const { url } = await p.started();
      const res = await own.send(`${url}/x`);
      expect(res.json()).toEqual({ v: 'agreed' });
    } finally {
      await own.close();
      p.child.kill('SIGTERM');
      await p.exited;
      for (const u of ups) await u.close();
    }
  });

  it('logs a request the gateway refused itself (413) with no copies', async () => {
    const a = await startUpstream(after(1, 200, {}));
    const p = run(['--upstream', `one=${a.url}`, '--port', '0', '--max-body-size', '10']);
    const own = testClient();
    try {
      const { url } = await p.started();
      const res = await own.send(`${url}/big`, { method: 'POST', body: 'x'.repeat(100) });
      expect(res.status).toBe(413);
      const line = await eventually(() => p.lines()[0]);
      expect(line).toMatchObject({ requestId: res.headers['x-request-id'], method: 'POST', path: '/big', status: 413, servedBy: null, copies: 0, outcome: 'refused' });
      expect(a.seen).toHaveLength(0);
    } finally {
      await own.close();
      p.child.kill('SIGTERM');
      await p.exited;
      await a.close();
    }
  });
});

describe('npx redundant-proxy: wrong arguments', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rp-cli-args-'));
    await writeFile(join(dir, 'empty'), '\n');
    await writeFile(join(dir, 'short'), 'tooshort-s3cr3t\n');
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  /** Exit code 2, one line naming the problem, then the usage; never the secret. */
  async function refused(args: string[], message: RegExp, env: Record<string, string> = {}) {
    const p = run(args, env);
    // A gateway that started instead of refusing is stopped, so the test fails rather than hangs.
    const started = setTimeout(() => p.child.kill('SIGKILL'), 10_000);
    const code = await p.exited;
    clearTimeout(started);
    expect(code).toBe(2);
    const [first, blank, usage] = p.err().split('\n');
    expect(first).toMatch(message);
    expect(blank).toBe('');
    expect(usage).toMatch(/^Usage: redundant-proxy --upstream/);
    expect(p.out()).toBe('');
    return p;
  }

  it.each([
    [['--upstream', 'ftp://nowhere'], /^redundant-proxy: option `upstreams\[0\]` must be an http: or https: URL/],
    [['--upstream', 'http://127.0.0.1:1', '--quorum', '2'], /`select.quorum` must be an integer from 1 to copies \(1\)/],
    [['--port', '0'], /^redundant-proxy: at least one --upstream is required$/],
    [['--upstream', 'a='], /^redundant-proxy: --upstream must be URL or ID=URL, got "a="$/],
    [['--upstream', 'a b=http://127.0.0.1:1'], /must be an absolute http\(s\) URL/],
    [['--upstream', 'http://127.0.0.1:1', '--port', 'eighty'], /^redundant-proxy: --port must be a number, got "eighty"$/],
    [['--upstream', 'http://127.0.0.1:1', '--metrics-port', '70000'], /^redundant-proxy: --metrics-port must be an integer from 0 to 65535, got "70000"$/],
    [['--upstream', 'http://127.0.0.1:1', '--access-log', 'json'], /^redundant-proxy: --access-log must be on or off, got "json"$/],
    [['--upstream', 'http://127.0.0.1:1', '--redis', 'http://127.0.0.1:6379'], /^redundant-proxy: --redis must be a redis:\/\/ or rediss:\/\/ URL/],
    [['--upstream', 'http://127.0.0.1:1', '--bogus'], /^redundant-proxy: Unknown option '--bogus'$/],
    [['--upstream', 'http://127.0.0.1:1', 'stray'], /^redundant-proxy: Unexpected argument 'stray'$/],
    [['--upstream', 'http://127.0.0.1:1', '--port', '-1'], /^redundant-proxy: Option '--port' argument is ambiguous$/],
    [['--upstream', 'http://127.0.0.1:1', '--port', '0x50'], /^redundant-proxy: --port must be an integer from 0 to 65535, got "0x50"$/],
    [['--upstream', 'http://127.0.0.1:1', '--copies', '1e0'], /^redundant-proxy: --copies must be an integer from 1 to \d+, got "1e0"$/],
    [['--upstream', 'http://127.0.0.1:1', '--port', '18081', '--metrics-port', '18081'], /^redundant-proxy: --metrics-port must differ from --port \(both 18081\)$/],
  ])('%j', async (args, message) => {
    await refused(args, message);
  });

  it('names a secret file it cannot read, or that is empty, and never prints a secret', async () => {
    await refused(['--upstream', 'http://127.0.0.1:1', '--secret-file', join(dir, 'missing')], /^redundant-proxy: --secret-file \S+missing cannot be read \(ENOENT\)$/);
    await refused(['--upstream', 'http://127.0.0.1:1', '--secret-file', join(dir, 'empty')], /^redundant-proxy: --secret-file \S+empty is empty$/);
    const short = await refused(['--upstream', 'http://127.0.0.1:1', '--secret-file', join(dir, 'short')], /option `secret` must be a string or Buffer of at least 16 characters\/bytes; got a string of 15 characters \(not shown\)/);
    expect(short.err()).not.toContain('tooshort');
    const twice = await refused(['--upstream', 'http://127.0.0.1:1', '--secret-file', join(dir, 'short')], /the secret is given twice/, { REDUNDANT_PROXY_SECRET: 'from-the-environment-0123' });
    expect(twice.err()).not.toContain('from-the-environment');
  });

  it('exits 1 with the reason when Redis cannot be reached, its password not shown', async () => {
    const p = run(['--upstream', 'http://127.0.0.1:1', '--redis', 'redis://:hunter2-password@127.0.0.1:1']);
    expect(await p.exited).toBe(1);
    expect(p.err()).toMatch(/^redundant-proxy: cannot connect to --redis redis:\/\/:\*\*\*@127\.0\.0\.1:1: .*ECONNREFUSED/m);
    expect(p.err()).not.toContain('hunter2');
  });

  it('exits 1 naming the port it cannot listen on, without saying it listens', async () => {
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
    const port = (busy.address() as net.AddressInfo).port;
    try {
      const p = run(['--upstream', 'http://127.0.0.1:1', '--port', '0', '--metrics-port', String(port)]);
      expect(await p.exited).toBe(1);
      expect(p.err()).toBe(`redundant-proxy: cannot listen on --metrics-port ${port} (host 127.0.0.1): address already in use\n`);
      const q = run(['--upstream', 'http://127.0.0.1:1', '--port', String(port)]);
      expect(await q.exited).toBe(1);
      expect(q.err()).toBe(`redundant-proxy: cannot listen on --port ${port} (host 127.0.0.1): address already in use\n`);
    } finally {
      await new Promise((r) => busy.close(r));
    }
  });

  it('--help prints the usage on stdout and exits 0', async () => {
    const p = run(['--help']);
    expect(await p.exited).toBe(0);
    expect(p.out()).toMatch(/^Usage: redundant-proxy --upstream \[ID=\]URL/);
    expect(p.out()).toContain('--secret-file PATH');
  });
});
