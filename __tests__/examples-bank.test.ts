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

function run(args: string[]) {
  const child = spawn(process.execPath, ['examples/bank/run.js', ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (c) => (out += c));
  child.stderr.on('data', (c) => (err += c));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return { child, exited, out: () => out, err: () => err };
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
      if (p.child.exitCode === null) p.child.kill('SIGKILL');
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
      if (p.child.exitCode === null) p.child.kill('SIGKILL');
    }
  }, 60_000);
});
