#!/usr/bin/env node
// A standalone gateway: `npx redundant-proxy --upstream a=URL --upstream b=URL --redis URL`.
import http from 'node:http';
import { createRequire } from 'node:module';
import type { Redis } from 'ioredis';
import { isRedundantProxyError } from './errors.js';
import { redundantProxy, type RedundantProxy } from './proxy/proxy.js';
import type { PrometheusRegistry } from './proxy/prometheus.js';
import { RedisSessionStore } from './store/redis.js';
import type { SessionStore } from './store/types.js';
import { AccessLog } from './cli/access-log.js';
import { parseCli, readSecret, UsageError, USAGE, withoutPassword, type CliConfig } from './cli/args.js';

/** What the CLI loads of prom-client: a registry of its own, read as Prometheus text. */
interface MetricsRegistry extends PrometheusRegistry {
  metrics(): Promise<string>;
  contentType: string;
}

/** Operator messages (not access logs, which own stdout): one line each on stderr. */
function say(message: string): void {
  process.stderr.write(`redundant-proxy: ${message}\n`);
}

function loadPeer<T>(name: string, option: string): T {
  try {
    return createRequire(import.meta.url)(name) as T;
  } catch {
    throw new UsageError(`${option} needs the ${name} package: npm install ${name}`);
  }
}

/** A Redis client and store, not connected yet: `connect()` once the options passed their checks. */
function redisStore(config: CliConfig): { client: Redis; store: SessionStore; connect(): Promise<void> } {
  const { Redis } = loadPeer<typeof import('ioredis')>('ioredis', '--redis');
  // Commands fail fast while Redis is down instead of queueing (what the store expects).
  const client = new Redis(config.redis!, { maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true, connectionName: 'redundant-proxy-cli' });
  let connected = false;
  let warned = false;
  let lastError: Error | undefined;
  client.on('error', (err: Error) => {
    lastError = err;
    // It reconnects by itself; said once per outage, not per attempt.
    if (connected && !warned) say(`redis: ${err.message} (reconnecting)`);
    warned = true;
  });
  client.on('ready', () => {
    connected = true;
    warned = false;
  });
  const store = new RedisSessionStore({ client, ...(config.redisPrefix === undefined ? {} : { prefix: config.redisPrefix }) });
  return {
    client,
    store,
    async connect() {
      try {
        await client.connect();
      } catch (err) {
        throw new Error(`cannot connect to --redis ${withoutPassword(config.redis!)}: ${(lastError ?? (err as Error)).message}`);
      }
    },
  };
}

/** Binds `server`; a failure names the option whose port it was (`cannot listen on --port 8080: address already in use`). */
function listen(server: http.Server, port: number, host: string, option: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const failed = (err: NodeJS.ErrnoException) =>
      reject(new Error(`cannot listen on ${option} ${port} (host ${host}): ${err.code === 'EADDRINUSE' ? 'address already in use' : (err.code ?? err.message)}`));
    server.once('error', failed);
    server.listen(port, host, () => {
      server.off('error', failed);
      const address = server.address();
      resolve(typeof address === 'object' && address ? address.port : port);
    });
  });
}

async function main(argv: string[]): Promise<void> {
  const config = parseCli(argv);
  if (!config) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const secret = await readSecret(config.secretFile, process.env.REDUNDANT_PROXY_SECRET);
  const registry = config.metricsPort === undefined ? undefined : new (loadPeer<{ Registry: new () => MetricsRegistry }>('prom-client', '--metrics-port').Registry)();
  const redis = config.redis === undefined ? undefined : redisStore(config);
  let proxy: RedundantProxy | undefined;
  try {
    proxy = redundantProxy({
      upstreams: config.upstreams,
      copies: config.copies,
      hedge: config.hedgeDelay === undefined ? undefined : { delay: config.hedgeDelay },
      timeout: config.timeout,
      maxBodySize: config.maxBodySize,
      select: config.quorum === undefined ? undefined : { quorum: config.quorum },
      ejection: config.ejection ? undefined : false,
      secret,
      prometheus: registry ? { registry } : undefined,
      ...(redis ? { store: redis.store } : {}),
    });
    // Options are checked (a bad one is exit code 2) before Redis is connected.
    await redis?.connect();
  } catch (err) {
    await proxy?.close();
    await redis?.store.close();
    redis?.client.disconnect();
    throw err;
  }
  proxy.on('error', (e) => {
    const err = e.error as { code?: string; message?: string } | undefined;
    say(`${e.source} error${e.requestId ? ` in request ${e.requestId}` : ''}: ${err?.code ? `${err.code} ` : ''}${err?.message ?? String(e.error)}`);
  });
  const log = config.accessLog ? new AccessLog(proxy, { write: (line) => process.stdout.write(line) }) : undefined;
  const server = http.createServer((req, res) => {
    const handle = () => void proxy.handler(req, res);
    if (log) log.handle(req, res, handle);
    else handle();
  });
  const metricsServer = registry ? http.createServer((req, res) => void serveMetrics(registry, req, res)) : undefined;
  try {
    // Both bound before either is announced: "listening" means the gateway runs.
    const port = await listen(server, config.port, config.host, '--port');
    const metricsPort = metricsServer ? await listen(metricsServer, config.metricsPort!, config.host, '--metrics-port') : undefined;
    const names = config.upstreams.map((u) => (typeof u === 'string' ? u : `${u.id}=${u.url}`)).join(', ');
    say(`listening on http://${config.host}:${port} → ${names}${redis ? ` (sessions in Redis at ${withoutPassword(config.redis!)})` : ''}`);
    if (metricsPort !== undefined) say(`metrics on http://${config.host}:${metricsPort}/metrics`);
  } catch (err) {
    server.close();
    metricsServer?.close();
    await proxy.close();
    await redis?.store.close();
    redis?.client.disconnect();
    throw err;
  }
  stopOnSignal({ config, server, metricsServer, proxy, log, redis });
}

async function serveMetrics(registry: MetricsRegistry, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  if ((req.method !== 'GET' && req.method !== 'HEAD') || (req.url ?? '').split('?')[0] !== '/metrics') {
    res.writeHead(404, { 'content-type': 'application/json' }).end('{"code":"NOT_FOUND","message":"metrics are at GET /metrics"}');
    return;
  }
  try {
    const text = await registry.metrics();
    res.writeHead(200, { 'content-type': registry.contentType }).end(req.method === 'HEAD' ? undefined : text);
  } catch (err) {
    res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${(err as Error).message}`);
  }
}

/**
 * SIGTERM / SIGINT: stop accepting connections, let the requests in flight
 * finish (at most `--shutdown-timeout`), close the session store and the
 * metrics server, and exit 0; 1 when requests had to be cut off. A second
 * signal exits at once.
 */
function stopOnSignal(parts: {
  config: CliConfig;
  server: http.Server;
  metricsServer: http.Server | undefined;
  proxy: RedundantProxy;
  log: AccessLog | undefined;
  redis: { client: Redis; store: SessionStore } | undefined;
}): void {
  const { config, server, metricsServer, proxy, log, redis } = parts;
  let stopping = false;
  const stop = async (signal: NodeJS.Signals) => {
    if (stopping) {
      say(`${signal} again: exiting now`);
      process.exit(1);
    }
    stopping = true;
    say(`${signal}: finishing the requests in flight (at most ${config.shutdownTimeout} ms)`);
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), config.shutdownTimeout)));
    // Stops accepting; its idle keep-alive connections close now, the busy ones once their response is out.
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    const drained = proxy.close().then(() => {
      server.closeIdleConnections();
      return closed;
    });
    const clean = (await Promise.race([drained.then(() => 'done' as const), deadline])) === 'done';
    clearTimeout(timer);
    if (!clean) {
      say(`requests still in flight after ${config.shutdownTimeout} ms: cutting them off`);
      server.closeAllConnections();
    }
    log?.close();
    if (metricsServer) {
      metricsServer.closeAllConnections();
      await new Promise((resolve) => metricsServer.close(resolve));
    }
    if (redis) {
      await redis.store.close();
      await redis.client.quit().catch(() => redis.client.disconnect());
    }
    process.exit(clean ? 0 : 1);
  };
  process.on('SIGINT', (s) => void stop(s));
  process.on('SIGTERM', (s) => void stop(s));
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof UsageError || (isRedundantProxyError(err) && (err as { code?: string }).code === 'RP_ERR_INVALID_OPTION')) {
    const message = (err as Error).message.replace(/^redundant-proxy: /, '');
    process.stderr.write(`redundant-proxy: ${message}\n\n${USAGE}\n`);
    process.exit(2);
  }
  say((err as Error)?.message ?? String(err));
  process.exit(1);
});
