// Processes of the chaos run: forked Node children spoken to over IPC (the
// gateway and the replicas), a private redis-server, free ports, and the
// bookkeeping that kills every one of them whatever way the run ends.
import { fork, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** Every process this run started and has not seen exit. Killed on exit, whatever happens. */
export const living = new Set();

let exitHookInstalled = false;
/** On any exit of this process, SIGKILL whatever is still alive (synchronously: 'exit' allows nothing else). */
export function installExitHook() {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const p of living) {
      try {
        p.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

/** A port of 127.0.0.1 that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Forks a Node child with IPC. The child sends { type: 'ready' } when it
 * serves, or { type: 'fatal', error } when it cannot. `ask(type)` sends
 * { type, id } and resolves with the answer that carries the same id.
 */
export function forkChild(script, { name, env }) {
  const proc = fork(script, [], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  living.add(proc);
  let stderr = '';
  proc.stderr.on('data', (c) => {
    stderr += c.toString();
    if (stderr.length > 20_000) stderr = stderr.slice(-10_000);
  });
  proc.on('error', () => {}); // a send to a child that just died; its exit is handled below
  let seq = 0;
  const pending = new Map();
  const exited = new Promise((resolve) => {
    proc.once('exit', (code, signal) => {
      living.delete(proc);
      for (const p of pending.values()) p.reject(new Error(`${name} exited (${signal ?? code}) before answering`));
      pending.clear();
      resolve({ code, signal });
    });
  });
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} not ready within 20 s; stderr: ${stderr.slice(-2000)}`)), 20_000);
    proc.on('message', (m) => {
      if (m?.type === 'ready') {
        clearTimeout(timer);
        resolve(m);
      } else if (m?.type === 'fatal') {
        clearTimeout(timer);
        reject(new Error(`${name}: ${m.error}`));
      }
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${signal ?? code}) before it was ready; stderr: ${stderr.slice(-2000)}`));
    });
  });
  ready.catch(() => {}); // awaited by the caller
  proc.on('message', (m) => {
    const p = m && m.id !== undefined ? pending.get(m.id) : undefined;
    if (p) {
      pending.delete(m.id);
      clearTimeout(p.timer);
      p.resolve(m);
    }
  });
  return {
    name,
    proc,
    ready,
    exited,
    get alive() {
      return proc.exitCode === null && proc.signalCode === null;
    },
    stderr: () => stderr,
    ask(type, ms = 5000, extra = {}) {
      const id = ++seq;
      return new Promise((resolve, reject) => {
        if (!proc.connected) return reject(new Error(`${name}: ${type}: the process is gone`));
        const timer = setTimeout(() => {
          pending.delete(id);
          reject(new Error(`${name}: no answer to ${type} within ${ms} ms`));
        }, ms);
        pending.set(id, { resolve, reject, timer });
        proc.send({ ...extra, type, id });
      });
    },
    /** Asks it to close; SIGKILL if it has not exited within `ms`. */
    async close(ms = 3000) {
      if (!this.alive) return exited;
      try {
        proc.kill('SIGCONT');
        if (proc.connected) proc.send({ type: 'close' });
      } catch {
        // gone meanwhile
      }
      const timer = setTimeout(() => proc.kill('SIGKILL'), ms);
      const r = await exited;
      clearTimeout(timer);
      return r;
    },
  };
}

/** True if something at host:port answers a RESP PING with PONG within 500 ms. */
export function redisPing(port, host = '127.0.0.1', ms = 500) {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    let reply = '';
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(ms, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      reply += chunk.toString();
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'));
    });
  });
}

/** A redis-server of this run's own: free port, 127.0.0.1, nothing written to disk. */
export async function startRedis(dir) {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const proc = spawn('redis-server', [
      '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir,
      '--loglevel', 'warning', '--protected-mode', 'yes',
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    living.add(proc);
    let output = '';
    proc.stdout.on('data', (c) => void (output = (output + c).slice(-4000)));
    proc.stderr.on('data', (c) => void (output = (output + c).slice(-4000)));
    proc.once('error', (err) => void (output += String(err)));
    const exited = new Promise((resolve) => proc.once('exit', (code, signal) => (living.delete(proc), resolve({ code, signal }))));
    const deadline = Date.now() + 10_000;
    let up = false;
    while (Date.now() < deadline && proc.exitCode === null && proc.signalCode === null) {
      if (await redisPing(port)) {
        up = true;
        break;
      }
      await sleep(30);
    }
    if (up) {
      return {
        port,
        proc,
        exited,
        /** 'T' while stopped (SIGSTOP), per /proc/<pid>/stat; undefined when it cannot be read. */
        state() {
          try {
            const stat = readFileSync(`/proc/${proc.pid}/stat`, 'utf8');
            return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
          } catch {
            return undefined;
          }
        },
        async stop() {
          if (proc.exitCode !== null || proc.signalCode !== null) return;
          proc.kill('SIGCONT');
          proc.kill('SIGKILL');
          await exited;
        },
      };
    }
    proc.kill('SIGKILL');
    await exited;
    if (attempt >= 3) throw new Error(`redis-server did not start: ${output.trim() || 'no output'}`);
  }
}
