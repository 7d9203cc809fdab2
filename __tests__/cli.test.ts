import { spawn } from 'node:child_process';
import { afterAll, describe, expect, it } from '@jest/globals';
import { testClient } from './helpers/client.js';
import { after, startUpstream } from './helpers/upstream.js';

const client = testClient();
afterAll(() => client.close());

function run(args: string[]) {
  const child = spawn(process.execPath, ['dist/cli.js', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (c) => (out += c));
  child.stderr.on('data', (c) => (err += c));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return { child, exited, out: () => out, err: () => err };
}

describe('npx redundant-proxy', () => {
  it('runs a standalone gateway that races the upstreams, and stops cleanly on SIGTERM', async () => {
    const a = await startUpstream(after(200, 200, { from: 'a' }));
    const b = await startUpstream(after(1, 200, { from: 'b' }));
    const p = run(['--upstream', a.url, '--upstream', b.url, '--port', '0']);
    while (!/listening on (\S+)/.test(p.out())) {
      if (p.child.exitCode !== null) throw new Error(p.err());
      await new Promise((r) => setTimeout(r, 20));
    }
    const url = /listening on (http:\/\/\S+)/.exec(p.out())![1]!;
    const res = await client.send(`${url}/x`);
    expect(res.status).toBe(200);
    expect(res.json()).toEqual({ from: 'b' });
    await client.close();
    p.child.kill('SIGTERM');
    expect(await p.exited).toBe(0);
    await a.close();
    await b.close();
  });

  it('exits 2 with the option named when the options are wrong', async () => {
    const p = run(['--upstream', 'ftp://nowhere']);
    expect(await p.exited).toBe(2);
    expect(p.err()).toMatch(/`upstreams\[0\]` must be an http: or https: URL/);
    const q = run(['--upstream', 'http://127.0.0.1:1', '--quorum', '2']);
    expect(await q.exited).toBe(2);
    expect(q.err()).toMatch(/`select.quorum` must be an integer from 1 to copies \(1\)/);
  });

  it('--quorum K answers with what K upstreams answered alike', async () => {
    const ups = [await startUpstream(after(1, 200, { v: 'odd one' })), await startUpstream(after(20, 200, { v: 'agreed' })), await startUpstream(after(40, 200, { v: 'agreed' }))];
    const p = run([...ups.flatMap((u) => ['--upstream', u.url]), '--port', '0', '--quorum', '2', '--no-ejection']);
    const own = testClient();
    try {
      while (!/listening on (\S+)/.test(p.out())) {
        if (p.child.exitCode !== null) throw new Error(p.err());
        await new Promise((r) => setTimeout(r, 20));
      }
      const url = /listening on (http:\/\/\S+)/.exec(p.out())![1]!;
      const res = await own.send(`${url}/x`);
      expect(res.json()).toEqual({ v: 'agreed' });
    } finally {
      await own.close();
      p.child.kill('SIGTERM');
      await p.exited;
      for (const u of ups) await u.close();
    }
  });
});
