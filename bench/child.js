// A benchmark child process spoken to over IPC: `ready` resolves with its
// { type: 'ready', ... } message, `ask(type, data?)` sends { type, id, data }
// and resolves with the answer carrying the same id (rejects if it carries an
// `error`), `stopChild` asks it to close and kills
// it if it does not. Shared by bench/run.js, bench/bookkeeping.js and
// bench/memory.js, with the autocannon wrapper and the standalone runner.
import { fork } from 'node:child_process';

export function forkChild(script, args, { name, dist, children, execArgv = [] }) {
  const child = fork(script, args, {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    execArgv,
    env: { ...process.env, RP_BENCH_DIST: dist },
  });
  children.add(child);
  child.on('error', () => {}); // a send to a child that just died: its exit is handled below
  let seq = 0;
  const pending = new Map();
  child.exited = new Promise((resolve) =>
    child.once('exit', (code) => {
      children.delete(child);
      for (const [, p] of pending) p.reject(new Error(`${name} child exited (${code}) before answering`));
      pending.clear();
      resolve(code);
    }),
  );
  const handle = { child };
  handle.ready = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${name} child not ready within 20 s`)), 20_000);
    child.once('message', (m) => {
      clearTimeout(t);
      if (m?.type === 'ready') resolve(m);
      else reject(new Error(`${name} child failed: ${m?.error ?? JSON.stringify(m)}`));
    });
    void child.exited.then((code) => {
      clearTimeout(t);
      reject(new Error(`${name} child exited (${code}) before it was ready`));
    });
  });
  handle.ready.catch(() => {}); // awaited by the caller; never an unhandled rejection meanwhile
  child.on('message', (m) => {
    const p = m && pending.get(m.id);
    if (p) {
      pending.delete(m.id);
      p.resolve(m);
    }
  });
  handle.ask = (type, data) => {
    const id = ++seq;
    return new Promise((resolve, reject) => {
      if (!child.connected) return reject(new Error(`${type}: the child process is gone`));
      pending.set(id, { resolve, reject });
      child.send(data === undefined ? { type, id } : { type, id, data });
    }).then((m) => {
      if (m.error) throw new Error(`${name}: ${type}: ${m.error}`);
      return m;
    });
  };
  return handle;
}

/**
 * One closed-loop autocannon run. `method` defaults to GET (autocannon
 * merges its options with Object.assign: an undefined one would erase its
 * default); a `body` is sent as JSON.
 */
export function cannon(autocannon, url, { connections, durationSec, method = 'GET', body }) {
  return new Promise((resolve, reject) => {
    const opts = { url, connections, duration: durationSec, pipelining: 1, timeout: 10, method };
    if (body) {
      opts.body = body;
      opts.headers = { 'content-type': 'application/json' };
    }
    autocannon(opts, (err, result) => (err ? reject(err) : resolve(result)));
  });
}

/** Runs a scenario alone (`node bench/x.js [--quick]`): its results as JSON on stdout. */
export function runStandalone(scenario) {
  const quick = process.argv.includes('--quick');
  // Ctrl-C or a kill: exit through process.exit, so that the scenario's exit hook kills what it started.
  process.once('SIGINT', () => process.exit(130));
  process.once('SIGTERM', () => process.exit(143));
  scenario({ quick }).then(
    (r) => process.stdout.write(`${JSON.stringify(r, null, 1)}\n`),
    (err) => {
      console.error(err);
      process.exitCode = 1;
    },
  );
}

export async function stopChild(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  if (child.connected) child.send({ type: 'close' }, (err) => err && child.kill('SIGKILL'));
  else child.kill('SIGKILL');
  const t = setTimeout(() => child.kill('SIGKILL'), 8000);
  await child.exited;
  clearTimeout(t);
}

/**
 * A child's way out: the proxy closed (at most 2 s), its servers, stores and
 * Redis clients after it, then exit; at most 5 s in all. Once, however often called.
 */
export function closer(getProxy, servers, stores, clients) {
  let closing = false;
  return async function close() {
    if (closing) return;
    closing = true;
    const t = setTimeout(() => process.exit(0), 5000);
    const proxy = getProxy();
    if (proxy) await Promise.race([proxy.close(), new Promise((r) => setTimeout(r, 2000))]);
    for (const s of servers) s.closeAllConnections?.();
    await Promise.allSettled(servers.map((s) => new Promise((r) => s.close(r))));
    await Promise.allSettled(stores.map((s) => s.close()));
    for (const c of clients) c.disconnect();
    clearTimeout(t);
    process.exit(0);
  };
}
