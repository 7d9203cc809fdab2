// `npm run chaos`: a torture test of redundant-proxy's exactly-once updates.
//
// A private redis-server, a PostgreSQL schema of its own, three replica
// processes (bench/chaos/replica.js) and a gateway process
// (bench/chaos/gateway.js). A client in this process sends money transfers,
// each with its own Idempotency-Key and transfer id, gives up on attempts
// after a random 300–3000 ms and retries with the same key and body until it
// learns the outcome (bounded). Meanwhile replicas are SIGKILLed and
// restarted, Redis is SIGSTOPped past the workers' lease, and replicas are
// made to die right after their database COMMIT and before their confirm.
// At the end the damage is counted in PostgreSQL, never in the code under
// test: double-applies, acknowledged transfers that are not in the ledger,
// transfers whose client never learned the outcome, conservation of money.
//
//   node bench/chaos/run.js                full run (10,000 transfers, concurrency 50)
//   node bench/chaos/run.js --quick        about a minute or less (1,500 transfers)
//   --json FILE      write the results as JSON
//   --write-doc      rewrite the results section of docs/reliability.md
//   --transfers=N --concurrency=N --accounts=N --faults-per-kind=N --seed=N
//                    overrides, for digging
//   --sabotage=uncoordinated|ack-without-commit
//                    harness self-check: replicas break exactly-once on
//                    purpose, and the run must fail
//
// Exit code: 0 when every check holds, 1 when one fails, 2 when the harness
// itself could not run.

import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { Pool } from 'undici';
import { forkChild, freePort, installExitHook, living, startRedis } from './children.js';
import { printTable, writeDoc } from './report.js';

// ------------------------------------------------------------------ options

const argv = process.argv.slice(2);
const flag = (name) => argv.includes(name);
const valueOf = (name) => {
  const eq = argv.find((a) => a.startsWith(`${name}=`));
  if (eq) return eq.slice(name.length + 1);
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length && !argv[i + 1].startsWith('--') ? argv[i + 1] : undefined;
};
const quick = flag('--quick');
const jsonFile = valueOf('--json');
const writeDocFlag = flag('--write-doc');
const seed = Number(valueOf('--seed') ?? Date.now() % 2 ** 31);
// Harness self-check: replicas that break exactly-once on purpose, to see
// that the run notices. 'uncoordinated' (double-applies), 'ack-without-commit'
// (lost acknowledged transfers).
const sabotage = valueOf('--sabotage');
if (sabotage !== undefined && !['uncoordinated', 'ack-without-commit'].includes(sabotage)) throw new Error(`--sabotage: unknown kind "${sabotage}"`);
if (sabotage && flag('--write-doc')) throw new Error('--write-doc records real runs only, not --sabotage ones');

const CFG = {
  mode: quick ? 'quick' : 'full',
  transfers: Number(valueOf('--transfers') ?? (quick ? 1500 : 10_000)),
  concurrency: Number(valueOf('--concurrency') ?? 50),
  accounts: Number(valueOf('--accounts') ?? 20),
  initialBalance: 1_000_000,
  lease: 1000,
  gatewayTimeout: 2000,
  clientTimeout: [300, 3000],
  maxAttempts: 40,
  maxTransferMs: 45_000,
  faultsPerKind: Number(valueOf('--faults-per-kind') ?? (quick ? 1 : 5)),
  /** Faults fire when this fraction of the transfers is done, spread evenly between the two. */
  faultWindow: [0.05, 0.85],
  replicaDownMs: [500, 1000],
  redisStopMs: [1500, 2000],
  /** Whole-run bound: past it no transfer starts and the run ends, failed. */
  deadlineMs: quick ? 150_000 : 600_000,
  pgPoolPerReplica: 10,
  seed,
};
for (const k of ['transfers', 'concurrency', 'accounts']) {
  if (!Number.isInteger(CFG[k]) || CFG[k] < 1) throw new Error(`--${k} must be a positive integer`);
}

const started = Date.now();
const log = (...m) => console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(6)}s]`, ...m);

// Seeded, so that a run's plan (accounts, amounts, timeouts, fault targets) can be replayed.
function mulberry32(a) {
  return () => {
    a |= 0;
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rnd = mulberry32(seed);
const between = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
const pick = (list) => list[Math.floor(rnd() * list.length)];

// ------------------------------------------------------------------ state and cleanup

const root = fileURLToPath(new URL('../../', import.meta.url));
const here = fileURLToPath(new URL('./', import.meta.url));
const runId = `${process.pid}_${randomBytes(3).toString('hex')}`;
const schema = `chaos_${runId}`;
const prefix = `chaos:${runId}:`;
const secret = randomBytes(24).toString('hex');
const tmp = mkdtempSync(join(os.tmpdir(), 'rp-chaos-'));
const faultLog = join(tmp, 'faults.jsonl');
writeFileSync(faultLog, '');

let redis;
let gateway;
let client;
let admin;
const replicas = new Map(); // id → { id, port, child, expectingExit, restarts }
let stopping = false;
let schemaCreated = false;

installExitHook();

async function cleanup() {
  stopping = true;
  const closing = [];
  if (gateway) closing.push(gateway.close(2000).catch(() => {}));
  for (const r of replicas.values()) if (r.child) closing.push(r.child.close(2000).catch(() => {}));
  await Promise.all(closing);
  if (client) await client.destroy().catch(() => {});
  if (redis) await redis.stop().catch(() => {});
  for (const p of living) p.kill('SIGKILL');
  if (schemaCreated) {
    try {
      const c = admin ?? (await connectAdmin());
      await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      schemaCreated = false;
    } catch (err) {
      console.error(`could not drop schema ${schema}: ${err.message}`);
    }
  }
  if (admin) await admin.end().catch(() => {});
  admin = undefined;
  rmSync(tmp, { recursive: true, force: true });
}

let signalled = false;
for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]]) {
  process.on(sig, () => {
    if (signalled) return;
    signalled = true;
    console.error(`\n${sig}: stopping children, dropping schema ${schema}`);
    setTimeout(() => process.exit(code), 10_000).unref();
    cleanup().finally(() => process.exit(code));
  });
}

async function connectAdmin() {
  const c = new pg.Client({ host: '127.0.0.1', port: 5432, user: 'postgres', database: 'test', connectionTimeoutMillis: 5000 });
  c.on('error', () => {});
  await c.connect();
  return c;
}

// ------------------------------------------------------------------ dist snapshot

// Other engineers rebuild dist/ while a run lasts minutes, and restarted
// replicas import the library again: every process of a run loads one copy
// of dist/ taken now (with a package.json saying ESM and node_modules linked).
function snapshotDist() {
  const dist = join(root, 'dist');
  if (!existsSync(join(dist, 'index.js')) || !existsSync(join(dist, 'redis.js'))) {
    throw new Error('dist/ is missing: run `npm run build` first (npm run chaos does)');
  }
  const snap = join(tmp, 'pkg');
  cpSync(dist, join(snap, 'dist'), { recursive: true });
  writeFileSync(join(snap, 'package.json'), JSON.stringify({ name: 'redundant-proxy-snapshot', type: 'module', private: true }));
  symlinkSync(join(root, 'node_modules'), join(snap, 'node_modules'), 'dir');
  const hash = createHash('sha256');
  for (const f of readdirSync(join(snap, 'dist'), { recursive: true }).map(String).filter((f) => f.endsWith('.js')).sort()) {
    hash.update(f).update(readFileSync(join(snap, 'dist', f)));
  }
  // The replica and gateway scripts too: a replica restarted mid-run runs the code the run started with.
  for (const f of ['replica.js', 'gateway.js']) cpSync(join(here, f), join(snap, 'chaos', f));
  const exportsAlready = readFileSync(join(snap, 'dist', 'index.js'), 'utf8').includes('AlreadyAppliedError');
  if (!exportsAlready) throw new Error('dist/index.js does not export AlreadyAppliedError: run `npm run build` (lib/ has it)');
  return { url: pathToFileURL(join(snap, 'dist') + '/').href, scripts: join(snap, 'chaos'), hash: hash.digest('hex').slice(0, 12) };
}

function gitInfo() {
  const git = (...a) => {
    try {
      return execFileSync('git', a, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
      return '';
    }
  };
  const dirty = git('status', '--porcelain', '--', 'lib');
  return { commit: git('rev-parse', '--short', 'HEAD') || 'unknown', dirty: dirty.length > 0, dirtyFiles: dirty ? dirty.split('\n').map((l) => l.slice(3)) : [] };
}

// ------------------------------------------------------------------ database

/**
 * What a run killed with SIGKILL left behind in the temp dir: its redis-server
 * (the replicas and the gateway exit by themselves when their parent's IPC
 * channel closes) and its files. Each run's temp dir names its own pid and its
 * redis-server's.
 */
function reapStaleRuns() {
  const alive = (pid) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch (err) {
      return err.code === 'EPERM';
    }
  };
  for (const name of readdirSync(os.tmpdir()).filter((n) => n.startsWith('rp-chaos-'))) {
    const dir = join(os.tmpdir(), name);
    if (dir === tmp) continue;
    let owner;
    try {
      owner = JSON.parse(readFileSync(join(dir, 'owner.json'), 'utf8'));
    } catch {
      continue; // not (yet) a run's, or not ours to judge
    }
    if (alive(owner.runPid)) continue;
    if (owner.redisPid && alive(owner.redisPid)) {
      // Only if it is still that run's redis-server (pids are reused): it
      // runs in that run's dir (--dir; it rewrites its own command line).
      const cwd = (() => {
        try {
          return readlinkSync(`/proc/${owner.redisPid}/cwd`);
        } catch {
          return '';
        }
      })();
      if (cwd === dir || cwd === realpathSync(dir)) {
        try {
          process.kill(owner.redisPid, 'SIGKILL');
        } catch {
          // gone
        }
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

async function dropStaleSchemas(c) {
  // Schemas of runs whose process is gone (a run killed with SIGKILL cannot clean up).
  const { rows } = await c.query("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'chaos\\_%'");
  for (const { nspname } of rows) {
    const pid = Number(nspname.split('_')[1]);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    let alive = true;
    try {
      process.kill(pid, 0);
    } catch (err) {
      alive = err.code === 'EPERM';
    }
    if (!alive) await c.query(`DROP SCHEMA IF EXISTS ${nspname} CASCADE`).catch(() => {});
  }
}

async function createSchema(c) {
  await c.query(`CREATE SCHEMA ${schema}`);
  schemaCreated = true;
  await c.query(`CREATE TABLE ${schema}.accounts (id int PRIMARY KEY, balance bigint NOT NULL, fence bigint NOT NULL DEFAULT 0)`);
  // transfer_id is deliberately NOT unique: a double-apply shows as two rows with one transfer_id.
  await c.query(`CREATE TABLE ${schema}.ledger (
    request_id text PRIMARY KEY,
    transfer_id text NOT NULL,
    fence bigint NOT NULL,
    upstream text,
    from_id int,
    to_id int,
    amount bigint,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
  )`);
  await c.query(`CREATE INDEX ON ${schema}.ledger (transfer_id)`);
  await c.query(`INSERT INTO ${schema}.accounts (id, balance) SELECT g, $1 FROM generate_series(1, $2) g`, [CFG.initialBalance, CFG.accounts]);
}

// ------------------------------------------------------------------ processes

let distUrl;
let scripts;
const stats = {
  faults: [],
  unexpectedExits: [],
};

async function startReplica(slot) {
  const child = forkChild(join(scripts, 'replica.js'), {
    name: `replica ${slot.id}`,
    env: {
      ID: slot.id,
      PORT: String(slot.port),
      REDIS_PORT: String(redis.port),
      SECRET: secret,
      PG_SCHEMA: schema,
      LEASE: String(CFG.lease),
      PREFIX: prefix,
      FAULT_LOG: faultLog,
      PG_POOL: String(CFG.pgPoolPerReplica),
      CHAOS_DIST: distUrl,
      SABOTAGE: sabotage ?? '',
    },
  });
  slot.child = child;
  slot.expectingExit = false;
  void child.exited.then(({ code, signal }) => {
    if (slot.child !== child || slot.expectingExit || stopping) return;
    // Not one of our faults: note it (with its stderr) and bring it back.
    stats.unexpectedExits.push({ upstream: slot.id, code, signal, at: Date.now() - started, stderr: child.stderr().slice(-2000) });
    log(`replica ${slot.id} exited unexpectedly (${signal ?? code}); restarting`);
    if (stats.unexpectedExits.length <= 20) {
      setTimeout(() => {
        if (!stopping && slot.child === child) startReplica(slot).catch(() => {});
      }, 500);
    }
  });
  await child.ready;
  return child;
}

async function startGateway() {
  const upstreams = [...replicas.values()].map((r) => ({ id: r.id, url: `http://127.0.0.1:${r.port}` }));
  gateway = forkChild(join(scripts, 'gateway.js'), {
    name: 'gateway',
    env: { UPSTREAMS: JSON.stringify(upstreams), REDIS_PORT: String(redis.port), SECRET: secret, PREFIX: prefix, TIMEOUT: String(CFG.gatewayTimeout), CHAOS_DIST: distUrl },
  });
  const ready = await gateway.ready;
  return `http://127.0.0.1:${ready.port}`;
}

/** Reads through the gateway until it has seen all three replicas answer as workers: only then are updates raced. */
async function warmUp(url) {
  const warm = new Pool(url, { connections: 4 });
  try {
    for (let i = 0; i < 100; i++) {
      const res = await warm.request({ path: '/health', method: 'GET' });
      await res.body.text();
      const { metrics } = await gateway.ask('metrics');
      if (Object.values(metrics.upstreams).every((u) => u.worker)) return;
      await sleep(20);
    }
    throw new Error('the gateway never saw all three replicas as workers');
  } finally {
    await warm.close();
  }
}

// ------------------------------------------------------------------ faults

function faultLines() {
  return readFileSync(faultLog, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

async function restartAfterDowntime(slot, fault) {
  const down = between(...CFG.replicaDownMs);
  await sleep(down);
  const t = Date.now();
  await startReplica(slot);
  fault.downMs = down;
  fault.restartMs = Date.now() - t;
}

async function faultReplicaKill() {
  const slot = pick([...replicas.values()].filter((r) => r.child?.alive));
  const fault = { kind: 'replica-kill', upstream: slot.id, at: Date.now() - started, fired: false };
  stats.faults.push(fault);
  slot.expectingExit = true;
  slot.child.proc.kill('SIGKILL');
  const { signal } = await slot.child.exited;
  fault.fired = signal === 'SIGKILL';
  fault.signal = signal;
  await restartAfterDowntime(slot, fault);
  log(`fault replica-kill ${slot.id}: ${fault.fired ? 'killed' : `NOT killed (${signal})`}, down ${fault.downMs} ms, back`);
}

async function faultRedisStop() {
  const ms = between(...CFG.redisStopMs);
  const fault = { kind: 'redis-stop', at: Date.now() - started, ms, fired: false };
  stats.faults.push(fault);
  redis.proc.kill('SIGSTOP');
  await sleep(50);
  fault.stateWhileStopped = redis.state();
  await sleep(ms - 50);
  const before = redis.state();
  redis.proc.kill('SIGCONT');
  await sleep(50);
  fault.stateAfter = redis.state();
  // Verified from the kernel's view of the process: stopped ('T') during, running after.
  fault.fired = fault.stateWhileStopped === 'T' && before === 'T' && fault.stateAfter !== 'T';
  log(`fault redis-stop ${ms} ms: ${fault.fired ? 'stopped and continued' : `NOT verified (${fault.stateWhileStopped}/${before}/${fault.stateAfter})`}`);
}

async function faultKillAfterCommit() {
  const fault = { kind: 'kill-after-commit', at: Date.now() - started, fired: false, tries: [] };
  stats.faults.push(fault);
  // An ejected replica gets no copies and could not fire: arm one the gateway sends to.
  for (let attempt = 1; attempt <= 4 && !stopping; attempt++) {
    let candidates = [...replicas.values()].filter((r) => r.child?.alive);
    try {
      const { metrics } = await gateway.ask('metrics');
      const live = candidates.filter((r) => !metrics.upstreams[r.id]?.ejected);
      if (live.length) candidates = live;
    } catch {
      // use every live one
    }
    const slot = pick(candidates);
    const seenBefore = faultLines().length;
    slot.expectingExit = true;
    const child = slot.child;
    try {
      await child.ask('kill-after-commit', 2000);
    } catch {
      // it may have died already (killed by this very fault); judged below
    }
    const t0 = Date.now();
    const outcome = await Promise.race([child.exited.then((e) => ({ exit: e })), sleep(5000).then(() => ({ timeout: true }))]);
    if (outcome.timeout) {
      await child.ask('disarm', 2000).catch(() => {});
      if (child.alive) {
        slot.expectingExit = false;
        fault.tries.push({ upstream: slot.id, fired: false, waitedMs: Date.now() - t0 });
        continue;
      }
    }
    const { signal } = await child.exited;
    const line = faultLines().slice(seenBefore).find((l) => l.upstream === slot.id);
    fault.tries.push({ upstream: slot.id, fired: Boolean(line && signal === 'SIGKILL'), waitedMs: Date.now() - t0 });
    fault.upstream = slot.id;
    fault.signal = signal;
    if (line && signal === 'SIGKILL') {
      fault.fired = true;
      fault.requestId = line.requestId;
      fault.transferId = line.transferId;
      fault.fence = line.fence;
    }
    await restartAfterDowntime(slot, fault);
    break;
  }
  log(`fault kill-after-commit: ${fault.fired ? `${fault.upstream} died after committing ${fault.transferId} (request ${fault.requestId})` : 'did NOT fire'}`);
}

const FAULTS = { 'replica-kill': faultReplicaKill, 'redis-stop': faultRedisStop, 'kill-after-commit': faultKillAfterCommit };

/** Runs the planned faults one after the other, each when its share of the transfers is done. */
async function runFaults(plan, progress, clientDone) {
  for (const step of plan) {
    while (!stopping && progress() < step.at) {
      if (await Promise.race([clientDone.then(() => true), sleep(20).then(() => false)])) break;
    }
    if (stopping || progress() < step.at) {
      step.skipped = true;
      continue;
    }
    try {
      await FAULTS[step.kind]();
    } catch (err) {
      stats.faults.push({ kind: step.kind, at: Date.now() - started, fired: false, error: String(err?.message ?? err) });
      log(`fault ${step.kind} failed: ${err?.message ?? err}`);
    }
  }
}

// ------------------------------------------------------------------ the client

const http = { attempts: 0, answers: {}, clientTimeouts: 0, connectionErrors: 0 };
const count = (key) => void (http.answers[key] = (http.answers[key] ?? 0) + 1);

/** One transfer, retried with the same key and body until its outcome is known, bounded. */
async function runTransfer(tr, deadline) {
  const t0 = Date.now();
  tr.started = t0 - started;
  for (let n = 1; n <= CFG.maxAttempts; n++) {
    if (Date.now() - t0 > CFG.maxTransferMs || Date.now() > deadline) {
      tr.outcome = 'gave-up';
      return;
    }
    const timeoutMs = between(...CFG.clientTimeout);
    const ac = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ac.abort();
    }, timeoutMs);
    const a = { n, at: Date.now() - started, timeoutMs };
    let json;
    try {
      const res = await client.request({
        path: '/transfer',
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': tr.key },
        body: tr.body,
        signal: ac.signal,
      });
      const text = await res.body.text();
      a.status = res.statusCode;
      a.requestId = res.headers['x-request-id'];
      a.replayed = res.headers['idempotent-replayed'] === 'true';
      a.servedBy = res.headers['x-redundant-served-by'];
      try {
        json = JSON.parse(text);
      } catch {
        json = undefined;
      }
      a.code = json?.code;
    } catch (err) {
      a.error = timedOut ? 'client-timeout' : String(err?.code ?? err?.name ?? err);
    } finally {
      clearTimeout(timer);
      a.ms = Date.now() - started - a.at;
    }
    tr.attempts.push(a);
    http.attempts++;
    if (a.error === 'client-timeout') {
      http.clientTimeouts++;
      count('client timeout (gave up on the attempt)');
    } else if (a.error) {
      http.connectionErrors++;
      count(`connection error ${a.error}`);
    } else {
      count(`${a.status}${a.code ? ` ${a.code}` : ''}${a.replayed ? ' (replayed)' : ''}`);
    }
    if (!a.error) {
      if (a.status >= 200 && a.status < 300) {
        tr.outcome = 'applied';
        tr.replayed = a.replayed;
        tr.ackRequestId = a.requestId;
        if (json?.transferId !== tr.id) tr.foreignAnswer = json?.transferId ?? '(none)';
        return;
      }
      if (a.status === 502 && a.code === 'RP_ERR_ANSWER_LOST') {
        tr.outcome = 'answer-lost';
        tr.replayed = a.replayed;
        tr.ackRequestId = json?.requestId ?? a.requestId;
        return;
      }
      if (a.status === 400 || a.status === 422) {
        tr.outcome = 'client-error';
        return;
      }
      if (a.replayed) {
        // The key holds this answer now: every retry gets it again. It tells
        // the client nothing about the transfer.
        tr.outcome = 'replayed-unknown';
        return;
      }
    }
    // Unknown yet: 409 in flight, 503, 504, other 502s, connection errors, client timeouts.
    const backoff = Math.min(1000, 50 * 2 ** Math.min(n - 1, 5));
    await sleep(Math.round(backoff * (0.5 + rnd())));
  }
  tr.outcome = 'gave-up';
}

async function runClient(transfers, deadline, onDone) {
  let next = 0;
  const lanes = Array.from({ length: CFG.concurrency }, async () => {
    while (!stopping && next < transfers.length && Date.now() < deadline) {
      const tr = transfers[next++];
      await runTransfer(tr, deadline);
      onDone();
    }
  });
  await Promise.all(lanes);
}

function planTransfers() {
  const list = [];
  for (let i = 0; i < CFG.transfers; i++) {
    const from = between(1, CFG.accounts);
    let to = between(1, CFG.accounts - 1);
    if (to >= from) to++;
    const id = `t-${runId}-${i}`;
    const amount = between(1, 1000);
    list.push({
      id,
      key: `k-${runId}-${i}-${randomBytes(4).toString('hex')}`,
      from,
      to,
      amount,
      body: JSON.stringify({ transferId: id, from, to, amount }),
      attempts: [],
      outcome: 'not-started',
    });
  }
  return list;
}

function planFaults() {
  const kinds = ['replica-kill', 'redis-stop', 'kill-after-commit'];
  const total = CFG.faultsPerKind * kinds.length;
  const [lo, hi] = CFG.faultWindow;
  return Array.from({ length: total }, (_, i) => ({ kind: kinds[i % kinds.length], at: total === 1 ? lo : lo + ((hi - lo) * i) / (total - 1) }));
}

// ------------------------------------------------------------------ counting, in the database

async function count_(transfers) {
  const { rows: ledger } = await admin.query(`SELECT request_id, transfer_id, fence::text AS fence, upstream, from_id, to_id, amount::int AS amount, committed_at FROM ${schema}.ledger ORDER BY committed_at`);
  const { rows: accounts } = await admin.query(`SELECT id, balance::bigint AS balance FROM ${schema}.accounts ORDER BY id`);
  const byTransfer = new Map();
  for (const row of ledger) {
    if (!byTransfer.has(row.transfer_id)) byTransfer.set(row.transfer_id, []);
    byTransfer.get(row.transfer_id).push(row);
  }
  const known = new Map(transfers.map((t) => [t.id, t]));
  const acked = (t) => t.outcome === 'applied' || t.outcome === 'answer-lost';
  const db = {
    ledgerRows: ledger.length,
    transfersInLedger: byTransfer.size,
    doubleApplies: 0,
    extraRows: 0,
    lostAcknowledged: 0,
    unresolvedApplied: 0,
    unresolvedNotApplied: 0,
    phantomRows: 0,
    corruptRows: 0,
    balanceBefore: CFG.accounts * CFG.initialBalance,
    balanceAfter: 0,
    conserved: false,
    accountsMismatched: 0,
  };
  const evidence = { doubleApplies: [], lostAcknowledged: [], unresolved: [], corrupt: [] };
  const attemptsOf = (t) => t.attempts.map((a) => ({ n: a.n, at: a.at, ms: a.ms, timeoutMs: a.timeoutMs, status: a.status, code: a.code, error: a.error, replayed: a.replayed, requestId: a.requestId, servedBy: a.servedBy }));
  const rowsOf = (rows) => rows.map((r) => ({ requestId: r.request_id, fence: r.fence, upstream: r.upstream, committedAt: r.committed_at.toISOString(), atMs: r.committed_at.getTime() - started }));
  for (const [id, rows] of byTransfer) {
    const t = known.get(id);
    if (!t) {
      db.phantomRows += rows.length;
      continue;
    }
    for (const r of rows) {
      if (r.from_id !== t.from || r.to_id !== t.to || r.amount !== t.amount) {
        db.corruptRows++;
        if (evidence.corrupt.length < 10) evidence.corrupt.push({ transferId: id, row: r });
      }
    }
    if (rows.length > 1) {
      db.doubleApplies++;
      db.extraRows += rows.length - 1;
      if (evidence.doubleApplies.length < 10) evidence.doubleApplies.push({ transferId: id, key: t.key, outcome: t.outcome, ackRequestId: t.ackRequestId, ledger: rowsOf(rows), attempts: attemptsOf(t) });
    }
  }
  for (const t of transfers) {
    const rows = byTransfer.get(t.id) ?? [];
    t.ledgerRows = rows.length;
    if (acked(t)) {
      if (rows.length === 0) {
        db.lostAcknowledged++;
        if (evidence.lostAcknowledged.length < 10) evidence.lostAcknowledged.push({ transferId: t.id, key: t.key, outcome: t.outcome, ackRequestId: t.ackRequestId, attempts: attemptsOf(t) });
      }
    } else if (t.outcome !== 'not-started') {
      if (rows.length > 0) db.unresolvedApplied++;
      else db.unresolvedNotApplied++;
      if (evidence.unresolved.length < 10) evidence.unresolved.push({ transferId: t.id, key: t.key, outcome: t.outcome, ledger: rowsOf(rows), attempts: attemptsOf(t) });
    }
  }
  // The client gave up mid-commit: the attempt that carried the commit was
  // abandoned by the client (its timeout), the commit landing after the
  // attempt began and before the client's next attempt — either before the
  // client gave up (its answer did not arrive in time) or after (the copies
  // went on without it). Node and PostgreSQL share this host's clock.
  db.commitAfterClientGaveUp = 0;
  db.commitBeforeClientGaveUp = 0;
  for (const t of transfers) {
    const rows = byTransfer.get(t.id) ?? [];
    if (rows.length === 0) continue;
    const at = rows[0].committed_at.getTime() - started;
    const k = t.attempts.findIndex((a, i) => a.error === 'client-timeout' && a.at <= at && (i + 1 >= t.attempts.length || at <= t.attempts[i + 1].at));
    if (k < 0) continue;
    if (at > t.attempts[k].at + t.attempts[k].ms) db.commitAfterClientGaveUp++;
    else db.commitBeforeClientGaveUp++;
  }
  const expected = new Map(accounts.map((a) => [a.id, BigInt(CFG.initialBalance)]));
  for (const r of ledger) {
    if (expected.has(r.from_id)) expected.set(r.from_id, expected.get(r.from_id) - BigInt(r.amount));
    if (expected.has(r.to_id)) expected.set(r.to_id, expected.get(r.to_id) + BigInt(r.amount));
  }
  let sum = 0n;
  for (const a of accounts) {
    const balance = BigInt(a.balance);
    sum += balance;
    if (balance !== expected.get(a.id)) db.accountsMismatched++;
  }
  db.balanceAfter = Number(sum);
  db.conserved = accounts.length === CFG.accounts && sum === BigInt(db.balanceBefore);
  // The five transfers that took longest to learn their outcome, attempt by attempt.
  const slowest = transfers
    .filter((t) => t.attempts.length)
    .map((t) => ({ t, ms: t.attempts.at(-1).at + t.attempts.at(-1).ms - t.attempts[0].at }))
    .sort((x, y) => y.ms - x.ms)
    .slice(0, 5)
    .map(({ t, ms }) => ({
      transferId: t.id,
      ms,
      outcome: t.outcome,
      ledger: rowsOf(byTransfer.get(t.id) ?? []),
      attempts: t.attempts.map((a) => `${a.at}+${a.ms}ms ${a.error ?? `${a.status}${a.code ? ` ${a.code}` : ''}${a.replayed ? ' replayed' : ''}`}${a.requestId ? ` ${a.requestId}` : ''}`),
      requestIds: [...new Set([...t.attempts.map((a) => a.requestId), ...(byTransfer.get(t.id) ?? []).map((r) => r.request_id)].filter(Boolean))],
    }));
  // Not failures: what "applied, answer lost" looked like, for reading.
  const samples = {
    answerLost: transfers
      .filter((t) => t.outcome === 'answer-lost')
      .slice(0, 5)
      .map((t) => ({ transferId: t.id, ledger: rowsOf(byTransfer.get(t.id) ?? []), attempts: attemptsOf(t) })),
  };
  return { db, evidence, samples, slowest };
}

// ------------------------------------------------------------------ main

/** Percentiles of answered attempts (ms), and of whole transfers from first send to known outcome. */
function latencies(transfers) {
  const pct = (xs, p) => (xs.length ? xs[Math.min(xs.length - 1, Math.floor(p * xs.length))] : 0);
  const answered = transfers.flatMap((t) => t.attempts.filter((a) => !a.error).map((a) => a.ms)).sort((x, y) => x - y);
  const whole = transfers.filter((t) => t.attempts.length).map((t) => t.attempts.at(-1).at + t.attempts.at(-1).ms - t.attempts[0].at).sort((x, y) => x - y);
  return {
    answeredAttempt: { p50: pct(answered, 0.5), p90: pct(answered, 0.9), p99: pct(answered, 0.99), max: answered.at(-1) ?? 0 },
    transfer: { p50: pct(whole, 0.5), p90: pct(whole, 0.9), p99: pct(whole, 0.99), max: whole.at(-1) ?? 0 },
  };
}

async function main() {
  const library = gitInfo();
  const snap = snapshotDist();
  distUrl = snap.url;
  scripts = snap.scripts;
  library.distHash = snap.hash;
  log(`chaos ${CFG.mode} run: ${CFG.transfers} transfers, concurrency ${CFG.concurrency}, seed ${seed}, library ${library.commit}${library.dirty ? '+lib changes' : ''}, dist ${snap.hash}`);

  reapStaleRuns();
  admin = await connectAdmin();
  await dropStaleSchemas(admin);
  await createSchema(admin);
  redis = await startRedis(tmp);
  writeFileSync(join(tmp, 'owner.json'), JSON.stringify({ runPid: process.pid, redisPid: redis.proc.pid }));
  log(`redis-server on 127.0.0.1:${redis.port}, schema ${schema}`);

  for (const id of ['a', 'b', 'c']) replicas.set(id, { id, port: await freePort(), child: undefined, expectingExit: false });
  await Promise.all([...replicas.values()].map((slot) => startReplica(slot)));
  const url = await startGateway();
  await warmUp(url);
  log(`gateway ${url}, replicas ${[...replicas.values()].map((r) => `${r.id}:${r.port}`).join(' ')}`);

  client = new Pool(url, { connections: CFG.concurrency + 16, pipelining: 1, keepAliveTimeout: 10_000 });
  const transfers = planTransfers();
  const faultPlan = planFaults();
  let done = 0;
  const deadline = started + CFG.deadlineMs;
  const t0 = Date.now();
  let lastReport = t0;
  const clientRun = runClient(transfers, deadline, () => {
    done++;
    if (Date.now() - lastReport > 5000) {
      lastReport = Date.now();
      log(`${done}/${transfers.length} transfers done, ${http.attempts} attempts`);
    }
  });
  const clientDone = clientRun.then(() => true, () => true);
  const faultRun = runFaults(faultPlan, () => done / transfers.length, clientDone);
  await clientRun;
  const clientMs = Date.now() - t0;
  await faultRun;
  log(`client done: ${done} transfers in ${(clientMs / 1000).toFixed(1)} s, ${http.attempts} attempts`);

  // What the processes counted, before they go (a replica killed meanwhile counted from its restart).
  const replicaStats = {};
  for (const r of replicas.values()) replicaStats[r.id] = await r.child.ask('stats', 3000).then((m) => m.stats, (e) => ({ error: e.message }));
  const gatewayStats = await gateway.ask('stats', 3000).then((m) => m.stats, (e) => ({ error: e.message }));
  const gatewayMetrics = await gateway.ask('metrics', 3000).then((m) => m.metrics, () => undefined);
  // The gateway's history of request ids worth a story: those of transfers that
  // needed more than two attempts or did not end with a plain 2xx.
  const wanted = new Set();
  for (const t of transfers) {
    if (t.attempts.length > 2 || t.outcome !== 'applied') for (const a of t.attempts) if (a.requestId) wanted.add(a.requestId);
  }
  const historyBefore = await gateway.ask('history', 10_000, { ids: [...wanted] }).then((m) => m.history, () => ({}));

  // Stop everything that could still write before counting.
  stopping = true;
  await Promise.all([gateway.close(3000), ...[...replicas.values()].map((r) => r.child.close(3000))]);

  const { db, evidence, samples, slowest } = await count_(transfers);
  // The gateway's story of the request ids behind the slowest transfers and the evidence.
  const ids = new Set(slowest.flatMap((x) => x.requestIds));
  for (const list of Object.values(evidence)) {
    for (const e of list) {
      for (const a of e.attempts ?? []) if (a.requestId) ids.add(a.requestId);
      for (const r of e.ledger ?? []) ids.add(r.requestId);
    }
  }
  const rel = (list) => list.map((h) => ({ ...h, startedAt: h.startedAt !== undefined ? h.startedAt - started : undefined, at: h.at !== undefined ? h.at - started : undefined, start: h.start !== undefined ? h.start - started : undefined }));
  const gatewayHistory = Object.fromEntries(Object.entries(historyBefore).filter(([id]) => ids.has(id)).map(([id, list]) => [id, rel(list)]));
  const byOutcome = {};
  for (const t of transfers) byOutcome[t.outcome] = (byOutcome[t.outcome] ?? 0) + 1;
  const acked = transfers.filter((t) => t.outcome === 'applied' || t.outcome === 'answer-lost');
  const attempted = transfers.filter((t) => t.outcome !== 'not-started').length;
  const kinds = ['replica-kill', 'redis-stop', 'kill-after-commit'];
  const faultCount = (kind) => ({
    planned: faultPlan.filter((f) => f.kind === kind).length,
    ran: stats.faults.filter((f) => f.kind === kind).length,
    fired: stats.faults.filter((f) => f.kind === kind && f.fired).length,
  });
  // What became of the transfers whose committing copy died before its confirm.
  const killed = stats.faults.filter((f) => f.kind === 'kill-after-commit' && f.fired).map((f) => {
    const t = transfers.find((x) => x.id === f.transferId);
    return { transferId: f.transferId, requestId: f.requestId, upstream: f.upstream, outcome: t?.outcome, ledgerRows: t?.ledgerRows, attempts: t?.attempts.length };
  });
  const result = {
    mode: CFG.mode,
    command: `node bench/chaos/run.js${quick ? ' --quick' : ''}${sabotage ? ` --sabotage=${sabotage}` : ''}`,
    sabotage: sabotage ?? null,
    startedAt: new Date(started).toISOString(),
    durationMs: Date.now() - started,
    clientMs,
    seed,
    host: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model?.trim() ?? 'unknown', node: process.version, platform: `${os.platform()} ${os.release()}` },
    library,
    config: { ...CFG, faultWindow: undefined },
    transfers: {
      planned: transfers.length,
      attempted,
      acknowledged: acked.length,
      acknowledged2xx: acked.filter((t) => t.outcome === 'applied').length,
      acknowledgedReplayed: acked.filter((t) => t.replayed).length,
      acknowledgedAnswerLost: acked.filter((t) => t.outcome === 'answer-lost').length,
      clientErrors: byOutcome['client-error'] ?? 0,
      unresolved: transfers.length - acked.length,
      byOutcome,
      foreignAnswers: transfers.filter((t) => t.foreignAnswer).length,
      attemptsPerTransfer: { max: Math.max(...transfers.map((t) => t.attempts.length)), mean: Number((http.attempts / Math.max(1, attempted)).toFixed(2)) },
      latencyMs: latencies(transfers),
    },
    http,
    db,
    faults: {
      replicaKill: faultCount('replica-kill'),
      redisStop: faultCount('redis-stop'),
      killAfterCommit: faultCount('kill-after-commit'),
      clientTimeouts: http.clientTimeouts,
      /** Transfers whose commit was carried by an attempt the client abandoned (client timeout). */
      clientGaveUpMidCommit: db.commitAfterClientGaveUp + db.commitBeforeClientGaveUp,
      /** …of which the commit landed after the client had given up (before its next attempt). */
      commitAfterClientGaveUp: db.commitAfterClientGaveUp,
      unexpectedExits: stats.unexpectedExits.length,
      timeline: stats.faults,
      killedAfterCommit: killed,
      unexpected: stats.unexpectedExits,
    },
    replicas: replicaStats,
    gateway: { stats: gatewayStats, metrics: gatewayMetrics },
    evidence,
    samples,
    slowest,
    gatewayHistory,
  };
  const failures = [];
  if (db.doubleApplies) failures.push(`${db.doubleApplies} double-applied transfers (${db.extraRows} extra ledger rows)`);
  if (db.lostAcknowledged) failures.push(`${db.lostAcknowledged} acknowledged transfers not in the ledger`);
  if (!db.conserved) failures.push(`money not conserved (${db.balanceBefore} before, ${db.balanceAfter} after)`);
  if (db.accountsMismatched) failures.push(`${db.accountsMismatched} accounts whose balance does not match the ledger`);
  if (result.transfers.unresolved) failures.push(`${result.transfers.unresolved} transfers unresolved (client never learned the outcome: ${Object.entries(byOutcome).filter(([k]) => k !== 'applied' && k !== 'answer-lost').map(([k, v]) => `${k} ${v}`).join(', ')})`);
  if (db.phantomRows || db.corruptRows) failures.push(`${db.phantomRows + db.corruptRows} ledger rows not matching a transfer`);
  if (result.transfers.foreignAnswers) failures.push(`${result.transfers.foreignAnswers} answers naming another transfer`);
  if (attempted < transfers.length) failures.push(`only ${attempted} of ${transfers.length} transfers attempted (deadline)`);
  if (result.faults.clientGaveUpMidCommit < 1) failures.push('no commit was carried by an attempt its client gave up on');
  for (const kind of kinds) {
    const c = faultCount(kind);
    if (c.fired < 1 || c.fired < c.planned) failures.push(`fault ${kind} fired ${c.fired} of ${c.planned} times`);
  }
  result.ok = failures.length === 0;
  result.failures = failures;
  return result;
}

let exitCode = 2;
let result;
try {
  result = await main();
  exitCode = result.ok ? 0 : 1;
} catch (err) {
  console.error(`chaos run could not complete: ${err?.stack ?? err}`);
  for (const r of replicas.values()) if (r.child?.stderr()) console.error(`replica ${r.id} stderr:\n${r.child.stderr().slice(-2000)}`);
  if (gateway?.stderr()) console.error(`gateway stderr:\n${gateway.stderr().slice(-2000)}`);
} finally {
  await cleanup();
}

if (result) {
  printTable(result);
  for (const [what, list] of Object.entries(result.evidence)) {
    if (list.length) console.log(`\nevidence, ${what} (first ${list.length}):\n${list.map((e) => JSON.stringify(e)).join('\n')}`);
  }
  if (result.faults.killedAfterCommit.length) {
    console.log(`\ntransfers whose committing copy was killed before its confirm:\n${result.faults.killedAfterCommit.map((k) => JSON.stringify(k)).join('\n')}`);
  }
  console.log('\nslowest transfers to learn their outcome (times in ms since the run started):');
  for (const x of result.slowest) {
    console.log(`${x.transferId} ${x.ms} ms ${x.outcome}, ${x.attempts.length} attempts: ${x.attempts.join(' | ')}`);
    console.log(`  ledger: ${x.ledger.map((r) => `${r.requestId} by ${r.upstream} at ${r.atMs}`).join(', ') || 'none'}`);
    for (const id of x.requestIds) {
      const h = result.gatewayHistory[id];
      if (h?.length) console.log(`  gateway, ${id}: ${h.map((e) => (e.start !== undefined ? `race start ${e.start}` : e.race ? `race ${e.race} ${e.startedAt}+${e.ms}ms status ${e.status}${e.committed ? ' committed' : ''} [${e.copies.join(', ')}]` : `${e.error} error at ${e.at}: ${e.message}`)).join(' | ')}`);
    }
  }
  for (const [id, s] of Object.entries(result.replicas)) console.log(`replica ${id} (since its last start): ${JSON.stringify(s)}`);
  console.log(`gateway: ${JSON.stringify(result.gateway.stats)}`);
  if (jsonFile) {
    writeFileSync(jsonFile, JSON.stringify(result, null, 2));
    console.log(`results written to ${jsonFile}`);
  }
  if (writeDocFlag) {
    const date = execFileSync('date', { encoding: 'utf8' }).trim();
    writeDoc(join(root, 'docs', 'reliability.md'), result, { command: result.mode === 'quick' ? 'npm run chaos -- --quick' : 'npm run chaos', date });
    console.log('docs/reliability.md results section rewritten');
  }
} else if (jsonFile) {
  writeFileSync(jsonFile, JSON.stringify({ ok: false, error: 'the chaos run could not complete' }));
}
process.exit(exitCode);
