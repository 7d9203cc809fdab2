import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { PREFIX } from '../wire/protocol.js';

// RFC 9110 §7.6.1: connection-specific fields a proxy must not forward, plus
// the ones Node or undici manage themselves (host, content-length, expect).
const HOP_BY_HOP = new Set([
  'connection',
  'proxy-connection',
  'keep-alive',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-authenticate',
  'proxy-authorization',
]);
const REQUEST_MANAGED = new Set(['host', 'content-length', 'expect', 'x-request-id']);
const RESPONSE_MANAGED = new Set(['x-request-id']);

/** Names listed in a `Connection` header, lowercased. */
function connectionTokens(value: string | string[] | undefined): Set<string> | undefined {
  if (value === undefined) return undefined;
  const joined = Array.isArray(value) ? value.join(',') : value;
  const out = new Set<string>();
  for (const token of joined.split(',')) {
    const t = token.trim().toLowerCase();
    if (t) out.add(t);
  }
  return out.size ? out : undefined;
}

function copyHeaders(
  from: Record<string, string | string[] | undefined>,
  managed: Set<string>,
): Record<string, string | string[]> {
  const named = connectionTokens(from.connection);
  const out: Record<string, string | string[]> = {};
  for (const name in from) {
    const value = from[name];
    if (value === undefined) continue;
    // Node and undici hand us lowercased names.
    if (HOP_BY_HOP.has(name) || managed.has(name) || name.startsWith(PREFIX)) continue;
    if (named?.has(name)) continue;
    out[name] = value;
  }
  return out;
}

/**
 * The headers every copy of `req` shares: the client's end-to-end headers,
 * less hop-by-hop ones and any `x-redundant-*` a client sent, plus
 * `X-Forwarded-*` and the minted request id.
 */
export function forwardRequestHeaders(req: IncomingMessage, requestId: string): Record<string, string | string[]> {
  const out = copyHeaders(req.headers, REQUEST_MANAGED);
  const remote = req.socket?.remoteAddress;
  if (remote) {
    const prior = req.headers['x-forwarded-for'];
    out['x-forwarded-for'] = prior ? `${Array.isArray(prior) ? prior.join(', ') : prior}, ${remote}` : remote;
  }
  // A front load balancer may already have set these: keep its view.
  out['x-forwarded-proto'] ??= (req.socket as { encrypted?: boolean } | undefined)?.encrypted ? 'https' : 'http';
  if (req.headers.host) out['x-forwarded-host'] ??= req.headers.host;
  out['x-request-id'] = requestId;
  return out;
}

/** The upstream's response headers as the client may see them. */
export function forwardResponseHeaders(headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  return copyHeaders(headers, RESPONSE_MANAGED);
}
