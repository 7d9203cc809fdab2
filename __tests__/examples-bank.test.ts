import { spawn } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from '@jest/globals';
import pg from 'pg';
import { PG } from './helpers/bank.js';
import { testClient } from './helpers/client.js';
import { eventually } from './helpers/replica.js';

// examples/bank runs as the README in its folder says (dist/ is built by
// `npm test` before jest runs): its scripted check passes, and the
// interactive mode serves the curl commands it prints and stops cleanly on
// Ctrl-C, leaving no schema and no redis-server behind.

const root = fileURLToPath(new URL('..', import.meta.url));
const admin = new pg.Pool({ ...PG, max: 1 });
afterAll(() => admin.end());

function run(args: string[], env: Record<string, string> = {}) {
  const child = spawn(process.execPath, ['examples/bank/run.js', ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let out = '';
  let err = '';
  child.stdout.on('data', (c) => (out += c));
  child.stderr.on('data', (c) => (err += c));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return { child, exited, out: () => out, err: () => err };
}

/**
 * After a failed check: SIGTERM first, so the example still stops its
 * redis-server (a process group of its own, which SIGKILL would leave behind)
 * and drops its schema; SIGKILL only if it does not exit in 10 s.
 */
async function finish(p: ReturnType<typeof run>) {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill('SIGTERM');
  const timer = setTimeout(() => p.child.kill('SIGKILL'), 10_000);
  await p.exited;
  clearTimeout(timer);
}

const schemaExists = async (schema: string) => (await admin.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema])).rowCount === 1;
const accepts = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });

describe('examples/bank', () => {
  it('--self-test: three replica processes, Redis sessions, a PostgreSQL ledger; the scripted check passes and everything is cleaned up', async () => {
    const p = run(['--self-test', '--port', '0']);
    try {
      const code = await p.exited;
      expect(p.err()).toBe('');
      expect(code).toBe(0);
      expect(p.out()).toMatch(/each raced as 3 copies \(60 copies\), one of which committed/);
      expect(p.out()).toMatch(/the ledger holds each of the 20 transfers once/);
      expect(p.out()).toMatch(/^self-test passed$/m);
      expect(p.out()).not.toMatch(/FAILED/);
      const schema = /schema (rp_bank_[0-9a-f]+)/.exec(p.out())![1]!;
      expect(await schemaExists(schema)).toBe(false);
      const redisPort = Number(/sessions in redis:\/\/127\.0\.0\.1:(\d+)/.exec(p.out())![1]);
      expect(await accepts(redisPort)).toBe(false);
    } finally {
      await finish(p);
    }
  }, 60_000);

  it('serves what it prints to curl, and Ctrl-C (SIGINT) stops it cleanly', async () => {
    const p = run(['--port', '0']);
    const client = testClient();
    try {
      await eventually(() => {
        if (p.child.exitCode !== null) throw new Error(`exited ${p.child.exitCode}: ${p.err()}`);
        return p.out().includes('Ctrl-C stops everything');
      }, 30_000);
      const url = /bank gateway on (http:\/\/\S+),/.exec(p.out())![1]!;
      expect(p.out()).toContain(`curl -s ${url}/accounts`);
      const schema = /schema (rp_bank_[0-9a-f]+)/.exec(p.out())![1]!;
      const redisPort = Number(/sessions in redis:\/\/127\.0\.0\.1:(\d+)/.exec(p.out())![1]);
      const transfer = { method: 'POST', headers: { 'content-type': 'application/json', 'idempotency-key': '"t-1"' }, body: JSON.stringify({ from: 1, to: 2, amount: 10 }) };
      const res = await client.send(`${url}/transfers`, transfer);
      expect(res.status).toBe(200);
      expect(res.json()).toMatchObject({ ok: true, from: 1, to: 2, amount: 10 });
      const again = await client.send(`${url}/transfers`, transfer);
      expect(again.headers['idempotent-replayed']).toBe('true');
      const accounts = await client.send(`${url}/accounts`);
      expect(accounts.json()).toEqual([
        { id: 1, owner: 'alice', balance: 990 },
        { id: 2, owner: 'bob', balance: 1010 },
        { id: 3, owner: 'carol', balance: 1000 },
      ]);
      // It prints each race as it ends.
      await eventually(() => /POST \/transfers → 200 from [abc]/.test(p.out()));
      await client.close();
      p.child.kill('SIGINT');
      expect(await p.exited).toBe(0);
      expect(await schemaExists(schema)).toBe(false);
      expect(await accepts(redisPort)).toBe(false);
    } finally {
      await client.close();
      await finish(p);
    }
  }, 60_000);

  it('cleans up when PostgreSQL drops its idle connection (the pool\'s error does not end it first)', async () => {
    const p = run(['--port', '0']);
    try {
      await eventually(() => {
        if (p.child.exitCode !== null) throw new Error(`exited ${p.child.exitCode}: ${p.err()}`);
        return p.out().includes('Ctrl-C stops everything');
      }, 30_000);
      const schema = /schema (rp_bank_[0-9a-f]+)/.exec(p.out())![1]!;
      const redisPort = Number(/sessions in redis:\/\/127\.0\.0\.1:(\d+)/.exec(p.out())![1]);
      // Only this run's own connection: the one whose last query named its schema (the replicas' name no schema).
      const { rowCount } = await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query LIKE '%' || $1 || '%'", [schema]);
      expect(rowCount).toBeGreaterThan(0);
      await eventually(() => p.err().includes('terminating connection'), 5000);
      expect(p.child.exitCode).toBe(null);
      p.child.kill('SIGINT');
      expect(await p.exited).toBe(0);
      expect(await schemaExists(schema)).toBe(false);
      expect(await accepts(redisPort)).toBe(false);
    } finally {
      await finish(p);
    }
  }, 60_000);

  it('Ctrl-C while its schema is being created still drops the schema once created', async () => {
    // PostgreSQL behind a relay that holds back the query creating the schema
    // until the example has been told to stop.
    let release: () => void = () => undefined;
    let held: (schema: string) => void = () => undefined;
    const holding = new Promise<string>((r) => (held = r));
    const relay = net.createServer((client) => {
      const server = net.connect({ host: PG.host, port: PG.port });
      const pending: Buffer[] = [];
      let holdingBack = false;
      client.on('data', (chunk: Buffer) => {
        const schema = /CREATE SCHEMA (rp_bank_[0-9a-f]+)/.exec(chunk.toString('latin1'))?.[1];
        if (schema) {
          holdingBack = true;
          release = () => {
            holdingBack = false;
            for (const c of pending.splice(0)) server.write(c);
          };
          held(schema);
        }
        if (holdingBack) pending.push(chunk);
        else server.write(chunk);
      });
      server.pipe(client);
      client.on('error', () => server.destroy());
      server.on('error', () => client.destroy());
      client.on('close', () => server.destroy());
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    const p = run(['--port', '0'], { PGHOST: '127.0.0.1', PGPORT: String((relay.address() as net.AddressInfo).port) });
    try {
      const schema = await holding;
      p.child.kill('SIGINT');
      await eventually(() => p.out().includes('stopping'), 5000);
      await new Promise((r) => setTimeout(r, 300));
      release();
      expect(await p.exited).toBe(0);
      expect(await schemaExists(schema)).toBe(false);
    } finally {
      await finish(p);
      await new Promise((r) => relay.close(r));
    }
  }, 60_000);
});
