import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import type { UpstreamSpec } from '../proxy/options.js';

// The command line of `redundant-proxy`: parsed and checked here, before
// anything listens or connects, so a wrong argument is one line on stderr
// and exit code 2, never a half-started gateway.

export const USAGE = `Usage: redundant-proxy --upstream [ID=]URL [--upstream [ID=]URL ...] [options]

Races copies of each request across the upstreams and answers with the first
acceptable result. Without --redis it uses the in-memory session store, which
only workers in this same process could share: give --redis to front workers
running elsewhere.

Options:
  --upstream [ID=]URL   an upstream (repeat; at least one). ID is the id its
                        worker was given (redundantWorker({ id })); without it
                        the id is the URL's host:port
  --port N              port to listen on (default 8080; 0 picks a free one)
  --host HOST           address to listen on, also for --metrics-port (default 127.0.0.1)
  --redis URL           session store on Redis (redis://[:password@]host:port[/db]),
                        the one the workers use
  --redis-prefix P      key prefix in Redis, as the workers' store has it (default rp:)
  --secret-file PATH    file holding the HMAC secret shared with the workers
                        (instead of REDUNDANT_PROXY_SECRET)
  --copies N            copies per read (default: one per upstream)
  --hedge-delay MS      hold each further copy back MS ms (default 0), or "adaptive"
  --timeout MS          whole-request timeout (default 30000)
  --max-body-size BYTES largest request body (default 1048576)
  --quorum K            answer a read only with what K upstreams answered alike
  --no-ejection         keep sending copies to upstreams that keep failing
  --access-log on|off   one JSON line per request on stdout (default on)
  --metrics-port N      serve Prometheus metrics at /metrics on this port (needs prom-client)
  --shutdown-timeout MS on SIGTERM/SIGINT, how long requests in flight may take
                        to finish before they are cut off (default 10000)
  --help                this text

The HMAC secret is read from --secret-file or from REDUNDANT_PROXY_SECRET
(not both); it is never printed.`;

/** A wrong command line: printed as one line and the usage, exit code 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export interface CliConfig {
  upstreams: Array<string | UpstreamSpec>;
  port: number;
  host: string;
  redis: string | undefined;
  redisPrefix: string | undefined;
  secretFile: string | undefined;
  copies: number | undefined;
  hedgeDelay: number | 'adaptive' | undefined;
  timeout: number | undefined;
  maxBodySize: number | undefined;
  quorum: number | undefined;
  ejection: boolean;
  accessLog: boolean;
  metricsPort: number | undefined;
  shutdownTimeout: number;
}

/** `undefined` for `--help`. Throws `UsageError`. */
export function parseCli(argv: string[]): CliConfig | undefined {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        upstream: { type: 'string', multiple: true },
        port: { type: 'string' },
        host: { type: 'string' },
        redis: { type: 'string' },
        'redis-prefix': { type: 'string' },
        'secret-file': { type: 'string' },
        copies: { type: 'string' },
        'hedge-delay': { type: 'string' },
        timeout: { type: 'string' },
        'max-body-size': { type: 'string' },
        quorum: { type: 'string' },
        'no-ejection': { type: 'boolean' },
        'access-log': { type: 'string' },
        'metrics-port': { type: 'string' },
        'shutdown-timeout': { type: 'string' },
        help: { type: 'boolean' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    // node:util's first sentence names the problem; the rest is a hint about `--` and positionals.
    // Its first sentence may end a line ("… is ambiguous.\nDid you forget …"): one line is kept either way.
    throw new UsageError((err as Error).message.split(/\.(?:\s|$)/)[0]!);
  }
  if (values.help) return undefined;
  if (!values.upstream?.length) throw new UsageError('at least one --upstream is required');
  const accessLog = values['access-log'] ?? 'on';
  if (accessLog !== 'on' && accessLog !== 'off') throw new UsageError(`--access-log must be on or off, got "${accessLog}"`);
  const port = integer('port', values.port, 0, 65535) ?? 8080;
  const metricsPort = integer('metrics-port', values['metrics-port'], 0, 65535);
  if (metricsPort !== undefined && metricsPort !== 0 && metricsPort === port) throw new UsageError(`--metrics-port must differ from --port (both ${port})`);
  if (values.redis !== undefined) checkRedisUrl(values.redis);
  if (values['secret-file'] === '') throw new UsageError('--secret-file must be a path');
  const hedge = values['hedge-delay'];
  return {
    upstreams: values.upstream.map(upstream),
    port,
    host: values.host ?? '127.0.0.1',
    redis: values.redis,
    redisPrefix: values['redis-prefix'],
    secretFile: values['secret-file'],
    copies: integer('copies', values.copies, 1, Number.MAX_SAFE_INTEGER),
    hedgeDelay: hedge === 'adaptive' ? 'adaptive' : number('hedge-delay', hedge),
    timeout: number('timeout', values.timeout),
    maxBodySize: number('max-body-size', values['max-body-size']),
    quorum: integer('quorum', values.quorum, 1, Number.MAX_SAFE_INTEGER),
    ejection: !values['no-ejection'],
    accessLog: accessLog === 'on',
    metricsPort,
    shutdownTimeout: integer('shutdown-timeout', values['shutdown-timeout'], 0, 2_147_483_647) ?? 10_000,
  };
}

/**
 * `ID=URL` names the upstream as its worker knows itself; a bare URL keeps
 * the id `host:port`. An id is letters, digits and `._:-` (what the proxy
 * accepts), so the `=` of a query (`http://h/?a=b`) is never taken for one.
 */
function upstream(value: string): string | UpstreamSpec {
  const named = /^([A-Za-z0-9._:-]*)=(.*)$/.exec(value);
  if (!named) return value;
  const id = named[1]!;
  const url = named[2]!;
  if (id === '' || url === '') throw new UsageError(`--upstream must be URL or ID=URL, got "${value}"`);
  return { id, url };
}

function number(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got "${value}"`);
  return n;
}

function integer(name: string, value: string | undefined, min: number, max: number): number | undefined {
  // Decimal digits only: Number() would also take "0x50" (80) and "1e3" (1000).
  if (value !== undefined && !/^\s*\d+\s*$/.test(value) && Number.isInteger(Number(value))) throw new UsageError(`--${name} must be an integer from ${min} to ${max}, got "${value}"`);
  const n = number(name, value);
  if (n !== undefined && (!Number.isInteger(n) || n < min || n > max)) throw new UsageError(`--${name} must be an integer from ${min} to ${max}, got "${value}"`);
  return n;
}

function checkRedisUrl(value: string): void {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new UsageError(`--redis must be a redis:// or rediss:// URL, got "${withoutPassword(value)}"`);
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') throw new UsageError(`--redis must be a redis:// or rediss:// URL, got "${withoutPassword(value)}"`);
}

/** A Redis URL as it may be printed: its password replaced. */
export function withoutPassword(value: string): string {
  return value.replace(/^([a-z]+:\/\/[^:/@]*:)[^@]*@/i, '$1***@');
}

/**
 * The secret shared with the workers: from `--secret-file` (its content, a
 * final line break removed) or `REDUNDANT_PROXY_SECRET`. Messages name the
 * file and why it failed, never what it holds.
 */
export async function readSecret(file: string | undefined, env: string | undefined): Promise<string | undefined> {
  if (file === undefined) return env || undefined;
  if (env) throw new UsageError('the secret is given twice: set REDUNDANT_PROXY_SECRET or --secret-file, not both');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new UsageError(`--secret-file ${file} cannot be read (${e.code ?? e.message})`);
  }
  const secret = text.replace(/\r?\n$/, '');
  if (secret.trim() === '') throw new UsageError(`--secret-file ${file} is empty`);
  return secret;
}
