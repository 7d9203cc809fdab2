import { execFileSync } from 'node:child_process';
import { describe, expect, it } from '@jest/globals';

// Runs against the built package (npm test builds first), through its own
// `exports` map, as a user's `import` and `require` would.
const run = (code: string) => execFileSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', cwd: process.cwd() });

describe('package exports', () => {
  it('import and require give the same exports', () => {
    const out = run(`
      import { createRequire } from 'node:module';
      const require = createRequire(import.meta.url + '/');
      const esm = await import('redundant-proxy');
      const cjs = require('redundant-proxy');
      console.log(JSON.stringify({ esm: Object.keys(esm).sort(), cjs: Object.keys(cjs).filter((k) => k !== '__esModule' && k !== 'module.exports').sort(), same: esm.redundantProxy === cjs.redundantProxy }));
    `);
    const { esm, cjs, same } = JSON.parse(out) as { esm: string[]; cjs: string[]; same: boolean };
    expect(esm).toEqual(cjs);
    expect(esm).toEqual(expect.arrayContaining(['redundantProxy', 'SupersededError', 'isRedundantProxyError']));
    expect(same).toBe(true);
  });

  it('resolves the ./redis and ./testing entries', () => {
    const out = run(`
      const redis = await import('redundant-proxy/redis');
      const testing = await import('redundant-proxy/testing');
      console.log(JSON.stringify({
        redis: typeof redis.RedisSessionStore,
        testing: Object.keys(testing).sort(),
        roles: Object.fromEntries(Object.entries(testing.conformance).map(([k, v]) => [k, typeof v])),
        all: testing.conformance.all === testing.testSessionStore,
      }));
    `);
    expect(JSON.parse(out)).toEqual({
      redis: 'function',
      testing: ['conformance', 'testSessionStore'],
      roles: { requestLog: 'function', sessionState: 'function', commitArbitration: 'function', idempotency: 'function', all: 'function' },
      all: true,
    });
  });
});
