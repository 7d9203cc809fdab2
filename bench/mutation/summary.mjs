#!/usr/bin/env node
// The scores of a mutation run (reports/mutation/mutants.json), per file and
// per Lua script, twice: raw (every survivor counted, and every mutant no
// test reached) and with the survivors reviewed as equivalent left out of
// the count (equivalent.mjs says which, and why). Prints the survivors no
// review covers: each is a test to write or a reason to add.
//
//   node bench/mutation/summary.mjs [reports/mutation/mutants.json]
//
// Reads lib/ as it is now: run it on the tree the run was made on.

import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EQUIVALENT } from './equivalent.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const report = JSON.parse(readFileSync(process.argv[2] ?? join(root, 'reports/mutation/mutants.json'), 'utf8'));
const sources = new Map();
const lineOf = (file, line) => {
  if (!sources.has(file)) sources.set(file, readFileSync(join(root, file), 'utf8').split('\n'));
  return sources.get(file)[line - 1] ?? '';
};

/** The review that covers a surviving mutant, if any. */
function review(m) {
  return EQUIVALENT.find((e) => e.file === m.file && (e.script === undefined || e.script === m.script) && lineOf(m.file, m.line).includes(e.code) && e.mutator === m.mutator && (e.replacement === undefined || e.replacement === String(m.replacement ?? '').replace(/\s+/g, ' ').trim()));
}

const rows = new Map();
const open = [];
const used = new Map();
for (const m of report.results) {
  const names = m.target === 'lua' ? [`${m.file} Lua (all scripts)`, `  Lua ${m.script}`] : [m.file];
  const survived = m.status === 'survived' || m.status === 'no coverage';
  const r = survived ? review(m) : undefined;
  if (survived && !r) open.push(m);
  if (r) used.set(r, (used.get(r) ?? 0) + 1);
  for (const name of names) {
    const row = rows.get(name) ?? { mutants: 0, killed: 0, timeout: 0, survived: 0, noCoverage: 0, equivalent: 0, ignored: 0 };
    if (m.status === 'ignored') row.ignored++;
    else {
      row.mutants++;
      if (m.status === 'killed') row.killed++;
      else if (m.status === 'timeout') row.timeout++;
      else if (m.status === 'survived') row.survived++;
      else row.noCoverage++;
      if (r) row.equivalent++;
    }
    rows.set(name, row);
  }
}

const pct = (a, b) => (b === 0 ? '100.0' : ((1000 * a) / b / 10).toFixed(1));
console.log(`run of ${report.date}, ${report.minutes} min, ${report.jobs} jobs, Node ${report.node}${report.brokenTestFiles?.length ? `; test files left out (failing unmutated): ${report.brokenTestFiles.join(', ')}` : ''}\n`);
console.log('| file | mutants | killed | timed out | survived | no coverage | score, raw | reviewed equivalent | score, equivalents excluded | ignored (text) |');
console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const [name, r] of [...rows].sort(([a], [b]) => (a.startsWith('  ') || b.startsWith('  ') ? 0 : a.localeCompare(b)))) {
  const caught = r.killed + r.timeout;
  console.log(`| ${name.trim()} | ${r.mutants} | ${r.killed} | ${r.timeout} | ${r.survived} | ${r.noCoverage} | ${pct(caught, r.mutants)} % | ${r.equivalent} | ${pct(caught, r.mutants - r.equivalent)} % | ${r.ignored} |`);
}
console.log(`\nsurvivors no review covers (${open.length}):`);
for (const m of open) console.log(`  ${m.id.padEnd(12)} ${m.file}:${m.line}  ${m.status === 'no coverage' ? '(no coverage) ' : ''}${m.mutator}: ${String(m.replacement ?? '').replace(/\s+/g, ' ').slice(0, 110)}   [${lineOf(m.file, m.line).trim().slice(0, 90)}]`);
const unused = EQUIVALENT.filter((e) => !used.has(e));
if (unused.length) {
  console.log(`\nreviews that matched no survivor (${unused.length}; killed now, or the code moved):`);
  for (const e of unused) console.log(`  ${e.file}  ${e.mutator} ${e.replacement ?? ''}  [${e.code}]`);
}
