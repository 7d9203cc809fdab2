#!/usr/bin/env node
// A standalone gateway: `npx redundant-proxy --upstream URL --upstream URL`.
import http from 'node:http';
import { parseArgs } from 'node:util';
import { isRedundantProxyError } from './errors.js';
import { redundantProxy } from './proxy/proxy.js';

const USAGE = `Usage: redundant-proxy --upstream URL [--upstream URL ...] [options]

Races copies of each request across the upstreams and answers with the first
acceptable result. Uses the in-memory session store (one process).

Options:
  --upstream URL        an upstream (repeat; at least one)
  --port N              port to listen on (default 8080; 0 picks a free one)
  --host HOST           address to listen on (default 127.0.0.1)
  --copies N            copies per read (default: one per upstream)
  --hedge-delay MS      hold each further copy back MS ms (default 0), or "adaptive"
  --timeout MS          whole-request timeout (default 30000)
  --max-body-size BYTES largest request body (default 1048576)
  --quorum K            answer a read only with what K upstreams answered alike
  --no-ejection         keep sending copies to upstreams that keep failing
  --help                this text

The HMAC secret shared with workers is read from REDUNDANT_PROXY_SECRET.`;

function number(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new Error(`--${name} must be a number, got "${value}"`);
  return n;
}

function main(argv: string[]): void {
  const { values } = parseArgs({
    args: argv,
    options: {
      upstream: { type: 'string', multiple: true },
      port: { type: 'string' },
      host: { type: 'string' },
      copies: { type: 'string' },
      'hedge-delay': { type: 'string' },
      timeout: { type: 'string' },
      'max-body-size': { type: 'string' },
      quorum: { type: 'string' },
      'no-ejection': { type: 'boolean' },
      help: { type: 'boolean' },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const hedge = values['hedge-delay'];
  const proxy = redundantProxy({
    upstreams: values.upstream ?? [],
    copies: number('copies', values.copies),
    hedge: hedge === undefined ? undefined : { delay: hedge === 'adaptive' ? 'adaptive' : number('hedge-delay', hedge)! },
    timeout: number('timeout', values.timeout),
    maxBodySize: number('max-body-size', values['max-body-size']),
    select: values.quorum === undefined ? undefined : { quorum: number('quorum', values.quorum)! },
    ejection: values['no-ejection'] ? false : undefined,
    secret: process.env.REDUNDANT_PROXY_SECRET || undefined,
  });
  const server = http.createServer(proxy.handler);
  const port = number('port', values.port) ?? 8080;
  const host = values.host ?? '127.0.0.1';
  server.listen(port, host, () => {
    const address = server.address();
    const bound = typeof address === 'object' && address ? address.port : port;
    console.log(`redundant-proxy listening on http://${host}:${bound} → ${(values.upstream ?? []).join(', ')}`);
  });
  const stop = () => {
    server.close();
    server.closeIdleConnections();
    void proxy.close().then(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

try {
  main(process.argv.slice(2));
} catch (err) {
  const message = (isRedundantProxyError(err) || err instanceof Error ? err.message : String(err)).replace(/^redundant-proxy: /, '');
  console.error(`redundant-proxy: ${message}\n\n${USAGE}`);
  process.exit(2);
}
