// The chaos run's report: the table printed at the end, and the results
// section of docs/reliability.md (between its two markers).
import { readFileSync, writeFileSync } from 'node:fs';

const n = (x) => (typeof x === 'number' ? x.toLocaleString('en-US') : String(x));

/** Rows [label, value, verdict] of the summary; verdict '' when it is a plain figure. */
export function summaryRows(r) {
  const ok = (good) => (good ? 'ok' : 'FAIL');
  const f = r.faults;
  return [
    ['transfers planned', n(r.config.transfers), ''],
    ['transfers attempted', n(r.transfers.attempted), ok(r.transfers.attempted === r.config.transfers)],
    ['HTTP attempts', n(r.http.attempts), ''],
    ['client timeouts (gave up mid-request)', n(r.http.clientTimeouts), ''],
    ['transfers acknowledged', n(r.transfers.acknowledged), ''],
    ['  as 2xx (of which replayed)', `${n(r.transfers.acknowledged2xx)} (${n(r.transfers.acknowledgedReplayed)})`, ''],
    ['  as 502 RP_ERR_ANSWER_LOST', n(r.transfers.acknowledgedAnswerLost), ''],
    ['double-applies (transfer_id with > 1 ledger row)', n(r.db.doubleApplies), ok(r.db.doubleApplies === 0)],
    ['lost acknowledged (acknowledged, 0 ledger rows)', n(r.db.lostAcknowledged), ok(r.db.lostAcknowledged === 0)],
    ['unresolved (client never learned the outcome)', n(r.transfers.unresolved), ok(r.transfers.unresolved === 0)],
    ['  of which applied in the database', n(r.db.unresolvedApplied), ''],
    ['  of which not applied', n(r.db.unresolvedNotApplied), ''],
    ['client errors (400/422)', n(r.transfers.clientErrors), ok(r.transfers.clientErrors === 0)],
    ['answers naming another transfer', n(r.transfers.foreignAnswers), ok(r.transfers.foreignAnswers === 0)],
    ['ledger rows not matching their transfer', n(r.db.corruptRows + r.db.phantomRows), ok(r.db.corruptRows + r.db.phantomRows === 0)],
    ['ledger rows', n(r.db.ledgerRows), ''],
    ['total balance before / after', `${n(r.db.balanceBefore)} / ${n(r.db.balanceAfter)}`, ok(r.db.conserved)],
    ['accounts whose balance ≠ their ledger', n(r.db.accountsMismatched), ok(r.db.accountsMismatched === 0)],
    ['fault: replica SIGKILL + restart (fired/planned)', `${n(f.replicaKill.fired)}/${n(f.replicaKill.planned)}`, ok(f.replicaKill.fired >= 1 && f.replicaKill.fired === f.replicaKill.planned)],
    ['fault: redis SIGSTOP > lease (fired/planned)', `${n(f.redisStop.fired)}/${n(f.redisStop.planned)}`, ok(f.redisStop.fired >= 1 && f.redisStop.fired === f.redisStop.planned)],
    ['fault: kill after COMMIT, before confirm (fired/planned)', `${n(f.killAfterCommit.fired)}/${n(f.killAfterCommit.planned)}`, ok(f.killAfterCommit.fired >= 1 && f.killAfterCommit.fired === f.killAfterCommit.planned)],
    ['fault: client gave up mid-commit (transfers)', n(f.clientGaveUpMidCommit), ok(f.clientGaveUpMidCommit >= 1)],
    ['  of which the commit landed after it gave up', n(f.commitAfterClientGaveUp), ''],
    ['unexpected replica exits', n(f.unexpectedExits), ''],
    ['duration', `${(r.durationMs / 1000).toFixed(1)} s`, ''],
  ];
}

export function printTable(r, log = console.log) {
  const rows = summaryRows(r);
  const w0 = Math.max(...rows.map((x) => x[0].length));
  const w1 = Math.max(...rows.map((x) => x[1].length));
  log('');
  log(`chaos ${r.mode} run — ${r.startedAt}${r.sabotage ? ` — SABOTAGED (${r.sabotage}): a harness self-check, the run must FAIL` : ''}`);
  log('-'.repeat(w0 + w1 + 10));
  for (const [label, value, verdict] of rows) log(`${label.padEnd(w0)}  ${value.padStart(w1)}  ${verdict}`);
  log('-'.repeat(w0 + w1 + 10));
  log('answers by status and code (per HTTP attempt):');
  for (const [k, v] of Object.entries(r.http.answers).sort((a, b) => b[1] - a[1])) log(`  ${k.padEnd(w0 - 2)}  ${n(v).padStart(w1)}`);
  log('-'.repeat(w0 + w1 + 10));
  log(r.ok ? 'RESULT: PASS' : `RESULT: FAIL — ${r.failures.join('; ')}`);
}

const START = '<!-- chaos:results:start -->';
const END = '<!-- chaos:results:end -->';

/** Rewrites the part of docs/reliability.md between the results markers. */
export function writeDoc(file, r, { command, date }) {
  const text = readFileSync(file, 'utf8');
  const a = text.indexOf(START);
  const b = text.indexOf(END);
  if (a < 0 || b < a) throw new Error(`${file}: results markers not found (${START} … ${END})`);
  const rows = summaryRows(r);
  const lines = [
    START,
    '',
    `Measured with \`${command}\` on ${date} (${r.host.cpus} × ${r.host.cpuModel}, Node ${r.host.node}, ` +
      `library at ${r.library.commit}${r.library.dirty ? ' with uncommitted changes in lib/' : ''}, dist ${r.library.distHash}).`,
    '',
    `${n(r.config.transfers)} transfers, concurrency ${r.config.concurrency}, lease ${r.config.lease} ms, gateway timeout ${r.config.gatewayTimeout} ms, ` +
      `client timeout per attempt ${r.config.clientTimeout[0]}–${r.config.clientTimeout[1]} ms, at most ${r.config.maxAttempts} attempts and ${r.config.maxTransferMs / 1000} s per transfer.`,
    '',
    `**Result: ${r.ok ? 'PASS' : 'FAIL'}**${r.ok ? '' : ` — ${r.failures.join('; ')}`}`,
    '',
    '| figure | value | |',
    '| --- | ---: | --- |',
    ...rows.map(([label, value, verdict]) => `| ${label.replace(/^ +/, '… ')} | ${value} | ${verdict} |`),
    '',
    'Answers by status and code, per HTTP attempt:',
    '',
    '| answer | count |',
    '| --- | ---: |',
    ...Object.entries(r.http.answers)
      .sort((x, y) => y[1] - x[1])
      .map(([k, v]) => `| ${k} | ${n(v)} |`),
    '',
    END,
  ];
  writeFileSync(file, text.slice(0, a) + lines.join('\n') + text.slice(b + END.length));
}
