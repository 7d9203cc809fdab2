import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { deadPort, sleep } from './upstream.js';

// A real `redis-server` of the tests' own, on a free port of 127.0.0.1, with
// nothing written to disk (`--save "" --appendonly no`; its working directory
// is a fresh temp dir, removed on stop). `redis-server` must be on PATH
// (`.ci/run` installs it). It can be killed and started again on the same
// port, to test what clients do while Redis is down and after it comes back
// (empty, as a restarted Redis without persistence is).

const run = promisify(execFile);

export interface RedisServer {
  readonly host: string;
  readonly port: number;
  /** True between `start()` and `kill()`/`stop()`. */
  readonly running: boolean;
  /** SIGKILL, as a crash: no shutdown, clients see the connection drop. Resolves once the process is gone. */
  kill(): Promise<void>;
  /** Starts it again on the same port. */
  start(): Promise<void>;
  /** Kills it (if running) and removes its temp dir. */
  stop(): Promise<void>;
}

export interface RedisServerOptions {
  /** Extra `redis-server` arguments, e.g. `['--cluster-enabled', 'yes']`. */
  args?: string[];
}

/** Starts a `redis-server` on a free port. */
export async function startRedisServer(options: RedisServerOptions = {}): Promise<RedisServer> {
  const dir = await mkdtemp(join(tmpdir(), 'rp-redis-'));
  const host = '127.0.0.1';
  let port = 0;
  let child: ChildProcess | undefined;

  const launch = async (): Promise<void> => {
    const proc = spawn('redis-server', [
      '--port', String(port), '--bind', host, '--save', '', '--appendonly', 'no', '--dir', dir,
      '--loglevel', 'warning', ...(options.args ?? []),
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    proc.stdout?.on('data', (chunk: Buffer) => { output += chunk.toString(); });
    proc.stderr?.on('data', (chunk: Buffer) => { output += chunk.toString(); });
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
    proc.once('error', () => undefined);
    // Ready when it answers PING; gone if it exits first (port taken, bad argument).
    const deadline = Date.now() + 10_000;
    for (;;) {
      const outcome = await Promise.race([exited.then(() => 'exited' as const), ping(host, port).then((ok) => (ok ? 'up' as const : 'down' as const))]);
      if (outcome === 'up') break;
      if (outcome === 'exited' || Date.now() > deadline) {
        proc.kill('SIGKILL');
        throw new Error(`redis-server on port ${port} did not start: ${output.trim() || 'no output'}`);
      }
      await sleep(20);
    }
    child = proc;
  };

  // `--port 0` is not supported: take a free port from the OS and hand it
  // to Redis; another process may grab it in between, so try a few times.
  for (let attempt = 1; ; attempt++) {
    port = await deadPort(host);
    try {
      await launch();
      break;
    } catch (err) {
      if (attempt >= 3) {
        await rm(dir, { recursive: true, force: true });
        throw err;
      }
    }
  }

  const kill = async (): Promise<void> => {
    const proc = child;
    child = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.kill('SIGKILL');
    await gone;
  };

  return {
    host,
    get port() {
      return port;
    },
    get running() {
      return child !== undefined;
    },
    kill,
    async start() {
      if (child) return;
      await launch();
    },
    async stop() {
      await kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface RedisClusterServers {
  /** One node per master; hand them to `new Cluster(nodes)`. */
  readonly nodes: Array<{ host: string; port: number }>;
  stop(): Promise<void>;
}

/**
 * A Redis Cluster of `masters` nodes (no replicas), each a `startRedisServer`
 * with cluster mode on. Its `nodes.conf` live in the nodes' temp dirs.
 */
export async function startRedisCluster(masters = 3): Promise<RedisClusterServers> {
  const servers: RedisServer[] = [];
  try {
    for (let n = 0; n < masters; n++) {
      // The cluster bus port defaults to port + 10000, which may be taken or
      // out of range; give it a free port of its own.
      const busPort = await deadPort('127.0.0.1');
      servers.push(await startRedisServer({ args: ['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-port', String(busPort)] }));
    }
    await run('redis-cli', ['--cluster', 'create', ...servers.map((s) => `${s.host}:${s.port}`), '--cluster-replicas', '0', '--cluster-yes']);
    // Every node must know every slot before clients connect.
    const deadline = Date.now() + 20_000;
    for (const s of servers) {
      for (;;) {
        const { stdout } = await run('redis-cli', ['-h', s.host, '-p', String(s.port), 'cluster', 'info']);
        if (stdout.includes('cluster_state:ok')) break;
        if (Date.now() > deadline) throw new Error(`cluster node ${s.port} not ok: ${stdout}`);
        await sleep(100);
      }
    }
  } catch (err) {
    await Promise.all(servers.map((s) => s.stop()));
    throw err;
  }
  return {
    nodes: servers.map((s) => ({ host: s.host, port: s.port })),
    async stop() {
      await Promise.all(servers.map((s) => s.stop()));
    },
  };
}

/** True if something at host:port answers a RESP PING with PONG. */
function ping(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    let reply = '';
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      reply += chunk.toString();
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'));
    });
  });
}
