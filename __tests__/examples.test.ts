import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from '@jest/globals';

// The examples the docs point at run, and say what the docs say (dist/ is
// built by `npm test` before jest runs).

const root = fileURLToPath(new URL('..', import.meta.url));

function run(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [file], { cwd: root, timeout: 20_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${file}: ${err.message}\n${stderr}`)) : resolve(stdout)));
  });
}

describe('examples', () => {
  it('examples/koa-gateway.js answers through the race, from the faster upstream', async () => {
    const out = await run('examples/koa-gateway.js');
    expect(out).toMatch(/^200 b \{"from":"b","path":"\/hello\?x=1"\}/);
  });

  it('examples/express-gateway.js mounts the proxy under /api with the prefix in the upstream URLs', async () => {
    const out = await run('examples/express-gateway.js');
    expect(out).toMatch(/^200 upstream-2 \{"from":"b","path":"\/api\/hello\?x=1"\}/);
  });
});
