import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, expect, it } from '@jest/globals';

// The torture test of exactly-once updates (bench/chaos/run.js, see
// docs/reliability.md), in its quick variant: a private redis-server, three
// replica processes and a gateway process on the built package (dist/, which
// `npm test` builds before jest runs), PostgreSQL for the money. Replicas are
// SIGKILLed, Redis is SIGSTOPped past the lease, a replica dies between its
// COMMIT and its confirm, and clients give up mid-request and retry with the
// same Idempotency-Key. The damage is counted in the database.

const root = fileURLToPath(new URL('../../', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'rp-chaos-test-'));
const jsonFile = join(dir, 'chaos.json');
let child: ChildProcess | undefined;

afterAll(async () => {
  // A run cut short (the test's timeout): SIGTERM lets it kill its processes
  // and drop its schema; SIGKILL if it does not manage within 15 s.
  const c = child;
  if (c && c.exitCode === null && c.signalCode === null) {
    const gone = new Promise((r) => c.once('exit', r));
    c.kill('SIGTERM');
    const timer = setTimeout(() => c.kill('SIGKILL'), 15_000);
    await gone;
    clearTimeout(timer);
  }
  rmSync(dir, { recursive: true, force: true });
});

interface FaultCount {
  planned: number;
  ran: number;
  fired: number;
}

interface ChaosResult {
  ok: boolean;
  failures: string[];
  transfers: { planned: number; attempted: number; acknowledged: number; unresolved: number; clientErrors: number; foreignAnswers: number };
  http: { attempts: number; clientTimeouts: number };
  db: {
    doubleApplies: number;
    lostAcknowledged: number;
    unresolvedApplied: number;
    conserved: boolean;
    balanceBefore: number;
    balanceAfter: number;
    accountsMismatched: number;
    phantomRows: number;
    corruptRows: number;
    ledgerRows: number;
  };
  faults: {
    replicaKill: FaultCount;
    redisStop: FaultCount;
    killAfterCommit: FaultCount;
    clientGaveUpMidCommit: number;
    timeline: Array<{ kind: string; fired: boolean; requestId?: string; transferId?: string; stateWhileStopped?: string; signal?: string }>;
  };
  evidence: Record<string, unknown[]>;
}

it(
  'a quick chaos run: no double-apply, no lost acknowledged transfer, money conserved, every transfer resolved, every fault fired',
  async () => {
    child = spawn(process.execPath, ['bench/chaos/run.js', '--quick', '--json', jsonFile], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
      // Without jest's --experimental-vm-modules: the run is plain Node.
      env: { ...process.env, NODE_OPTIONS: '' },
    });
    let output = '';
    child.stdout?.on('data', (c: Buffer) => void (output += c.toString()));
    child.stderr?.on('data', (c: Buffer) => void (output += c.toString()));
    const code = await new Promise<number | null>((resolve) => child!.once('exit', (c) => resolve(c)));

    let r: ChaosResult;
    try {
      r = JSON.parse(readFileSync(jsonFile, 'utf8')) as ChaosResult;
    } catch {
      throw new Error(`the chaos run wrote no results (exit ${code}):\n${output.slice(-6000)}`);
    }
    // Every figure asserted at once, so that a failure shows all of them, with
    // the run's own table and its evidence (ledger rows, attempts, request ids).
    const firedOk = (f: FaultCount) => f.fired >= 1 && f.fired === f.planned;
    const seen = {
      transfersAtLeast1000: r.transfers.attempted >= 1000,
      allAttempted: r.transfers.attempted === r.transfers.planned,
      // Every fault kind actually happened: a chaos test whose faults did not fire tests nothing.
      replicaKillFired: firedOk(r.faults.replicaKill),
      redisStopFired: firedOk(r.faults.redisStop),
      redisSeenStopped: r.faults.timeline.filter((f) => f.kind === 'redis-stop' && f.fired).every((f) => f.stateWhileStopped === 'T'),
      killAfterCommitFired: firedOk(r.faults.killAfterCommit),
      killAfterCommitSelfKilled: r.faults.timeline.filter((f) => f.kind === 'kill-after-commit' && f.fired).every((f) => f.signal === 'SIGKILL' && typeof f.requestId === 'string'),
      clientTimeouts: r.http.clientTimeouts >= 1,
      clientGaveUpMidCommit: r.faults.clientGaveUpMidCommit >= 1,
      // The damage, counted in PostgreSQL.
      doubleApplies: r.db.doubleApplies,
      lostAcknowledged: r.db.lostAcknowledged,
      unresolved: r.transfers.unresolved,
      clientErrors: r.transfers.clientErrors,
      foreignAnswers: r.transfers.foreignAnswers,
      strayLedgerRows: r.db.phantomRows + r.db.corruptRows,
      conserved: r.db.conserved && r.db.balanceAfter === r.db.balanceBefore,
      accountsMismatched: r.db.accountsMismatched,
      oneLedgerRowPerTransfer: r.db.ledgerRows === r.transfers.planned,
      runSaysOk: r.ok,
      exitCode: code,
    };
    const wanted: typeof seen = {
      transfersAtLeast1000: true,
      allAttempted: true,
      replicaKillFired: true,
      redisStopFired: true,
      redisSeenStopped: true,
      killAfterCommitFired: true,
      killAfterCommitSelfKilled: true,
      clientTimeouts: true,
      clientGaveUpMidCommit: true,
      doubleApplies: 0,
      lostAcknowledged: 0,
      unresolved: 0,
      clientErrors: 0,
      foreignAnswers: 0,
      strayLedgerRows: 0,
      conserved: true,
      accountsMismatched: 0,
      oneLedgerRowPerTransfer: true,
      runSaysOk: true,
      exitCode: 0,
    };
    if (JSON.stringify(seen) !== JSON.stringify(wanted)) {
      console.error(`chaos run failed: ${r.failures.join('; ')}\nevidence: ${JSON.stringify(r.evidence).slice(0, 8000)}\n${output.slice(-8000)}`);
    }
    expect(seen).toEqual(wanted);
  },
  190_000,
);
