#!/usr/bin/env node
// Mutation testing of the exactly-once paths: the commit gate, the claim /
// confirm / release and idempotency paths of both stores (TypeScript and the
// Redis store's Lua scripts), and the proxy's idempotency handling. Does
// deleting or inverting a guarding line fail a test?
//
//   npm run mutation                          everything (≈ 70 min on 2 cores)
//   node bench/mutation/run.mjs --files commit,memory --jobs 2
//   node bench/mutation/run.mjs --only commit:12,lua:L7  (ids from a report)
//   node bench/mutation/run.mjs --list        the mutants, nothing run
//
// How: the TypeScript mutants are Stryker's (its instrumenter, with its
// standard mutators, places every mutant of a file behind a switch); the Lua
// mutants are this runner's own line-level ones (lua.mjs). Stryker's own jest
// runner is not used: under jest's ESM mode (--experimental-vm-modules) it
// reported mutants as surviving that fail tests when switched on by hand
// (bench/mutation/RESULTS.md). So each mutant runs in a fresh jest process,
// switched on by the instrumenter's own environment variable
// (__STRYKER_ACTIVE_MUTANT__), with only the test files of its source file
// that reached it in a first, unmutated pass, fastest first, --bail. Killed:
// a test failed; timeout: the tests did not end in time (counted as killed,
// as Stryker does: an update that hangs is caught); survived: all passed; no
// coverage: no test of its file reached it (counted as survived).
//
// Everything runs in a copy under the system's temp dir (never in lib/ here),
// made from the current working tree: lib/, __tests__/, dist/, configs;
// node_modules is linked. Tests use the real Redis (their own redis-servers)
// and PostgreSQL, as they do in `npm test`. Report: reports/mutation/.

import { spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Instrumenter } from '@stryker-mutator/instrumenter';
import { ignoreMessages } from './ignore-messages.mjs';
import { luaMutants, LUA_SOURCES } from './lua.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');

/**
 * The files in scope, the parts of each that are mutated (found by what the
 * code says, not by line numbers: other people edit these files), and the
 * test files that may kill their mutants (a mutant runs only those of them
 * that reached it).
 */
export const TARGETS = [
  {
    name: 'commit',
    file: 'lib/worker/commit.ts',
    blocks: [[/^export function commitGate\(/]],
    tests: ['worker/commit-gate-more.test.ts', 'worker/commit-gate.test.ts', 'worker/store-failures.test.ts'],
  },
  {
    name: 'memory',
    file: 'lib/store/memory.ts',
    blocks: [
      [/^  async claim\(/], [/^  async confirm\(/], [/^  async release\(/], [/^  async beginIdempotent\(/], [/^  async completeIdempotent\(/],
      [/^  #grant\(/], [/^  #wait\(/], [/^  #settle\(/], [/^  #schedule\(/], [/^  #rejectWaiters\(/], [/^  #removeWaiter\(/],
    ],
    tests: ['store/memory-more.test.ts', 'worker/commit-gate-more.test.ts', 'worker/commit-gate.test.ts', 'store/memory.test.ts'],
  },
  {
    // The memory store's bounded key index.
    name: 'memory-keys',
    file: 'lib/store/memory/idempotency-keys.ts',
    blocks: [[/^export function keyBytes\(/], [/^export function answerBytes\(/], [/^export class IdempotencyKeys /]],
    tests: ['store/memory-more.test.ts', 'store/memory.test.ts'],
  },
  {
    name: 'redis',
    file: 'lib/store/redis.ts',
    blocks: [
      [/^  async claim\(/], [/^  async confirm\(/], [/^  async release\(/], [/^  async beginIdempotent\(/], [/^  async completeIdempotent\(/],
      [/^  async #attempt\(/], [/^  #giveBack\(/], [/^  #wait\(/], [/^  async #settle\(/], [/^  #schedule\(/], [/^  #rejectAll\(/], [/^  #drop\(/],
      [/^  #onMessage\(/], [/^  #superseded\(/], [/^  #listen\(/], [/^  #wakeArgs\(/],
      // The request log: which records may be held back for batch.maxDelay.
      [/^  async recordCopy\(/], [/^  async recordAdoption\(/], [/^  async recordCancelled\(/], [/^  flushRecords\(/],
    ],
    tests: ['redis/redis-waiters.test.ts', 'redis/redis-batch.test.ts', 'redis/redis-scripts.test.ts', 'redis/redis-store.test.ts', 'redis/conformance.test.ts', 'redis/outage.test.ts', 'redis/cluster.test.ts'],
  },
  {
    // The batches of the Redis store: records, claims, confirms, session reads.
    name: 'batch',
    file: 'lib/store/redis/batch.ts',
    blocks: [[/^export function recordHead\(/], [/^export class Batcher</]],
    tests: ['redis/redis-batch.test.ts', 'redis/redis-store.test.ts', 'redis/conformance.test.ts', 'redis/outage.test.ts'],
  },
  {
    name: 'idempotency',
    file: 'lib/proxy/idempotency.ts',
    blocks: [[/^export class Idempotency /], [/^export function lostAnswer\(/]],
    tests: ['proxy/idempotency.test.ts', 'updates/race-failures.test.ts', 'updates/exactly-once.test.ts'],
  },
  {
    name: 'proxy',
    file: 'lib/proxy/proxy.ts',
    blocks: [
      // The Idempotency of the proxy, the key taken before the race (stage
      // idempotency, and the request id it runs under), the race's hooks for
      // it, and its end (stage record).
      [/^  const idempotency = opts\.idempotency$/, /^    : null;$/],
      [/^  async function takeKey\(/],
      [/^      beforeFailure: update \?/, /^      attempt: keyed\?\.attempt/],
      [/^  function record\(/],
    ],
    tests: ['updates/race-failures.test.ts', 'updates/no-commit.test.ts', 'updates/exactly-once.test.ts'],
  },
  {
    name: 'bookkeeping',
    file: 'lib/proxy/bookkeeping.ts',
    // An update's last word before it fails or adopts at the timeout (the seal).
    blocks: [[/^  async decideUpdate\(/]],
    tests: ['proxy/seal.test.ts', 'updates/race-failures.test.ts', 'updates/broken-commit.test.ts', 'updates/no-commit.test.ts', 'updates/exactly-once.test.ts'],
  },
];

/** The Lua scripts are mutated as text and run against the Redis store's tests. */
const LUA_TESTS = ['redis/redis-scripts.test.ts', 'redis/redis-waiters.test.ts', 'redis/redis-batch.test.ts', 'redis/redis-store.test.ts', 'redis/conformance.test.ts', 'redis/outage.test.ts', 'redis/cluster.test.ts'];

function args() {
  const out = { files: [...TARGETS.map((t) => t.name), 'lua'], only: undefined, jobs: 3, list: false };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--files') out.files = argv[++i].split(',');
    else if (a === '--only') out.only = new Set(argv[++i].split(','));
    else if (a === '--jobs') out.jobs = Number(argv[++i]);
    else if (a === '--list') out.list = true;
    else throw new Error(`unknown argument ${a} (see the top of bench/mutation/run.mjs)`);
  }
  return out;
}

/** 0-based line ranges of `blocks` in `source`: from a line matching start to the first after it matching end (default: the closing brace at its indentation). */
function ranges(file, source, blocks) {
  const lines = source.split('\n');
  return blocks.map(([start, end]) => {
    const from = lines.findIndex((l) => start.test(l));
    if (from === -1) throw new Error(`${file}: no line matches ${start}`);
    const indent = /^\s*/.exec(lines[from])[0];
    const stop = end ?? new RegExp(`^${indent}}[;,)]*$`);
    const to = lines.findIndex((l, i) => i > from && stop.test(l));
    if (to === -1) throw new Error(`${file}: nothing closes the block at line ${from + 1}`);
    return { start: { line: from, column: 0 }, end: { line: to, column: lines[to].length } };
  });
}

const quiet = { isTraceEnabled: () => false, isDebugEnabled: () => false, isInfoEnabled: () => false, isWarnEnabled: () => false, isErrorEnabled: () => false, isFatalEnabled: () => false, trace() {}, debug() {}, info() {}, warn(...a) { console.warn(...a); }, error(...a) { console.error(...a); }, fatal() {} };

async function instrument(targets) {
  const files = targets.map((t) => {
    const content = readFileSync(join(root, t.file), 'utf8');
    return { name: join(root, t.file), content, mutate: ranges(t.file, content, t.blocks) };
  });
  const result = await new Instrumenter(quiet).instrument(files, { plugins: null, excludedMutations: [], ignorers: [ignoreMessages], noHeader: false });
  return { files: result.files, mutants: result.mutants };
}

/** A copy of the repository to run tests in; `lib` as given (instrumented), node_modules linked. */
function makeCopy(dir, instrumented) {
  for (const entry of ['lib', '__tests__', 'dist', 'jest.config.js', 'package.json', 'tsconfig.json']) {
    if (existsSync(join(root, entry))) cpSync(join(root, entry), join(dir, entry), { recursive: true });
  }
  mkdirSync(join(dir, 'bench/mutation'), { recursive: true });
  for (const f of ['coverage-environment.cjs', 'keep-order-sequencer.cjs']) cpSync(join(here, f), join(dir, 'bench/mutation', f));
  symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'), 'dir');
  for (const f of instrumented) writeFileSync(join(dir, f.name.slice(root.length + 1)), f.content);
  // The repository's jest config, with the runner's sequencer (and, for the first pass, its environment).
  writeFileSync(join(dir, 'mutation.jest.config.mjs'), `import base from './jest.config.js';
export default {
  ...base,
  testSequencer: '<rootDir>/bench/mutation/keep-order-sequencer.cjs',
  ...(process.env.RP_MUTATION_COVERAGE ? { testEnvironment: '<rootDir>/bench/mutation/coverage-environment.cjs' } : {}),
};
`);
}

/** One jest process over `tests` (in this order, --bail), with `env`; resolves killed / survived / timeout. */
function runJest(dir, tests, env, timeoutMs, names) {
  return new Promise((done) => {
    const started = Date.now();
    const child = spawn(process.execPath, ['--experimental-vm-modules', 'node_modules/jest/bin/jest.js', '-c', 'mutation.jest.config.mjs', '--ci', '--bail', '--runInBand', '--silent', ...(names ? ['-t', names.map(escapeRegExp).join('|')] : []), ...tests.map((t) => `__tests__/${t}`)], {
      cwd: dir,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
      env: { ...process.env, FORCE_COLOR: '0', RP_MUTATION_ORDER: tests.join(','), ...env },
    });
    let output = '';
    child.stdout.on('data', (c) => (output += c));
    child.stderr.on('data', (c) => (output += c));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      // The whole group: jest and the redis-servers its tests started.
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {}
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      // Leftovers of a killed run (redis-servers of its own) go with it.
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {}
      const failed = [...new Set([...output.matchAll(/^\s+● (.+ › .+)$/gm)].map((m) => m[1].trim()))].slice(0, 3);
      done({ status: timedOut ? 'timeout' : code === 0 ? 'survived' : 'killed', ms: Date.now() - started, failed, output });
    });
  });
}

async function main() {
  const opts = args();
  const targets = TARGETS.filter((t) => opts.files.includes(t.name));
  const started = Date.now();
  const date = new Date().toISOString();

  // 1. The mutants.
  const { files: instrumented, mutants: tsMutants } = await instrument(TARGETS);
  const mutants = [];
  // The instrumenter counts lines from 0; the report, from 1.
  for (const m of tsMutants) {
    const target = TARGETS.find((t) => m.fileName === join(root, t.file));
    const status = m.status === 'Ignored' ? 'ignored' : undefined;
    mutants.push({ id: `${target.name}:${m.id}`, switchId: m.id, target: target.name, file: target.file, line: m.location.start.line + 1, column: m.location.start.column, mutator: m.mutatorName, replacement: m.replacement, status, statusReason: m.statusReason });
  }
  if (opts.files.includes('lua')) {
    for (const spec of LUA_SOURCES) {
      for (const m of luaMutants(readFileSync(join(root, spec.file), 'utf8'), spec)) mutants.push({ ...m, id: `lua:${m.id}`, target: 'lua', file: spec.file });
    }
  }
  const chosen = mutants.filter((m) => (opts.only ? opts.only.has(m.id) : opts.files.includes(m.target)));
  if (opts.list) {
    for (const m of chosen) console.log(`${m.id}\t${m.file}:${m.line}\t${m.mutator}\t${m.replacement?.replace(/\s+/g, ' ').slice(0, 120)}${m.status ? `\t(${m.status})` : ''}`);
    return;
  }

  const base = mkdtempSync(join(tmpdir(), 'rp-mutation-'));
  try {
    const slots = [];
    for (let n = 0; n < Math.max(1, opts.jobs); n++) {
      const dir = join(base, `slot-${n}`);
      mkdirSync(dir);
      makeCopy(dir, instrumented);
      slots.push(dir);
    }

    // 2. A first pass, unmutated: every test file must pass; which mutants each reaches, and how long it takes.
    const testFiles = [...new Set([...targets.flatMap((t) => t.tests), ...(opts.files.includes('lua') ? LUA_TESTS : [])])].filter((t) => existsSync(join(root, '__tests__', t)));
    const coverage = new Map();
    const duration = new Map();
    const broken = [];
    console.log(`first pass: ${testFiles.length} test files, unmutated`);
    await pool(slots, testFiles, async (dir, test) => {
      const file = join(dir, `coverage-${test.replace(/\W/g, '_')}.jsonl`);
      const r = await runJest(dir, [test], { RP_MUTATION_COVERAGE: file }, 600_000);
      if (r.status !== 'survived') {
        // Left out, and said so: a test file that fails unmutated can kill nothing.
        console.error(`  ${test}: FAILS WITHOUT ANY MUTANT (${r.status}); left out of this run:\n${r.output.slice(-3000)}`);
        broken.push(test);
        return;
      }
      const cov = { static: new Set(), perTest: new Map(), all: new Set() };
      const lines = existsSync(file) ? readFileSync(file, 'utf8').trim().split('\n').filter(Boolean) : [];
      for (const line of lines) {
        const entry = JSON.parse(line);
        for (const id of entry.static) cov.static.add(id);
        for (const [name, ids] of Object.entries(entry.perTest)) cov.perTest.set(name, new Set([...(cov.perTest.get(name) ?? []), ...ids]));
      }
      for (const id of cov.static) cov.all.add(id);
      for (const ids of cov.perTest.values()) for (const id of ids) cov.all.add(id);
      coverage.set(test, cov);
      duration.set(test, r.ms);
      console.log(`  ${test}: passes in ${(r.ms / 1000).toFixed(1)} s, ${coverage.get(test).perTest.size} tests reach ${coverage.get(test).all.size} mutants`);
    });

    // 3. The mutants, one jest process each.
    const results = [];
    const todo = [];
    for (const m of chosen) {
      if (m.status === 'ignored') {
        results.push({ ...m, tests: [], ms: 0 });
        continue;
      }
      const candidates = m.target === 'lua' ? LUA_TESTS : TARGETS.find((t) => t.name === m.target).tests;
      const tests = candidates.filter((t) => coverage.has(t) && (m.target === 'lua' || coverage.get(t).all.has(m.switchId))).sort((a, b) => duration.get(a) - duration.get(b));
      // Only the tests that reached it, unless a file reached it outside any test (a hook, module load): then whole files.
      let names;
      if (m.target !== 'lua' && !tests.some((t) => coverage.get(t).static.has(m.switchId))) {
        names = tests.flatMap((t) => [...coverage.get(t).perTest].filter(([, ids]) => ids.has(m.switchId)).map(([name]) => name));
      }
      if (tests.length === 0) {
        results.push({ ...m, status: 'no coverage', tests, ms: 0 });
        continue;
      }
      todo.push({ ...m, tests, names });
    }
    console.log(`\n${todo.length} mutants to run (${results.filter((r) => r.status === 'no coverage').length} reached by no test, ${results.filter((r) => r.status === 'ignored').length} ignored), ${slots.length} at a time`);
    let done = 0;
    await pool(slots, todo, async (dir, m) => {
      const budget = m.tests.reduce((sum, t) => sum + duration.get(t), 0);
      const timeoutMs = Math.max(8_000, 2 * budget + 5_000);
      let r;
      if (m.target === 'lua') {
        const path = join(dir, m.file);
        const instrumentedSource = readFileSync(path, 'utf8');
        writeFileSync(path, m.source);
        try {
          r = await runJest(dir, m.tests, {}, timeoutMs);
        } finally {
          writeFileSync(path, instrumentedSource);
        }
      } else {
        const env = { __STRYKER_ACTIVE_MUTANT__: m.switchId };
        r = await runJest(dir, m.tests, env, timeoutMs, m.names);
        // The tests that reached it passed: so must the whole files (a test may kill it through work another test started).
        if (r.status === 'survived' && m.names) r = await runJest(dir, m.tests, env, timeoutMs);
      }
      const result = { ...m, status: r.status, ms: r.ms, failed: r.failed };
      delete result.source;
      delete result.names;
      results.push(result);
      done++;
      const what = m.target === 'lua' ? `${m.script}: ${m.replacement}` : `${m.mutator}: ${(m.replacement ?? '').replace(/\s+/g, ' ').slice(0, 70)}`;
      console.log(`[${String(done).padStart(4)}/${todo.length}] ${r.status.padEnd(8)} ${(r.ms / 1000).toFixed(1).padStart(5)} s  ${m.file}:${m.line}  ${what}${r.status === 'killed' && r.failed[0] ? `   ← ${r.failed[0].slice(0, 90)}` : ''}`);
    });

    // 4. The report.
    for (const r of results) delete r.source;
    results.sort((a, b) => (a.file === b.file ? a.line - b.line || a.column - b.column : a.file.localeCompare(b.file)));
    const table = summarize(results);
    console.log(`\n${format(table)}\n`);
    const survivors = results.filter((r) => r.status === 'survived' || r.status === 'no coverage');
    if (survivors.length) {
      console.log('survived (or reached by no test):');
      for (const s of survivors) console.log(`  ${s.id.padEnd(16)} ${s.file}:${s.line}  ${s.status === 'no coverage' ? '(no coverage) ' : ''}${s.target === 'lua' ? `${s.script} ${s.kind}` : s.mutator}: ${(s.replacement ?? '').replace(/\s+/g, ' ').slice(0, 110)}`);
    }
    const minutes = ((Date.now() - started) / 60_000).toFixed(1);
    console.log(`\ndone in ${minutes} min`);
    const out = join(root, 'reports/mutation');
    mkdirSync(out, { recursive: true });
    writeFileSync(join(out, 'mutants.json'), JSON.stringify({ date, minutes: Number(minutes), node: process.version, jobs: slots.length, brokenTestFiles: broken, testFiles: Object.fromEntries([...duration].map(([t, ms]) => [t, { ms, tests: coverage.get(t).perTest.size, reaches: coverage.get(t).all.size }])), summary: table, results }, null, 2));
    console.log(`report: ${join(out, 'mutants.json')}`);
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
}

function escapeRegExp(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Runs `work(slot, item)` over `items`, one item per slot at a time. */
async function pool(slots, items, work) {
  let next = 0;
  await Promise.all(slots.map(async (slot) => {
    for (;;) {
      const item = items[next++];
      if (item === undefined) return;
      await work(slot, item);
    }
  }));
}

function summarize(results) {
  const rows = new Map();
  const add = (name, r) => {
    const row = rows.get(name) ?? { mutants: 0, killed: 0, timeout: 0, survived: 0, noCoverage: 0, ignored: 0 };
    if (r.status === 'ignored') row.ignored++;
    else {
      row.mutants++;
      row[{ killed: 'killed', timeout: 'timeout', survived: 'survived', 'no coverage': 'noCoverage' }[r.status]]++;
    }
    rows.set(name, row);
  };
  for (const r of results) {
    add(r.target === 'lua' ? `${r.file} Lua ${r.script}` : r.file, r);
    if (r.target === 'lua') add(`${r.file} Lua (all scripts)`, r);
    add('all', r);
  }
  return [...rows].map(([name, row]) => ({ name, ...row, score: row.mutants ? Math.round((1000 * (row.killed + row.timeout)) / row.mutants) / 10 : 100 }));
}

function format(table) {
  const head = ['file', 'mutants', 'killed', 'timeout', 'survived', 'no cov', 'score %', 'ignored'];
  const rows = table.map((r) => [r.name, r.mutants, r.killed, r.timeout, r.survived, r.noCoverage, r.score, r.ignored]);
  const width = head.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  return [head, ...rows].map((r) => r.map((c, i) => String(c).padEnd(width[i])).join('  ')).join('\n');
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
