import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { CLIENT_HEADERS, PREFIX } from '../wire/protocol.js';

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
const REQUEST_MANAGED = new Set(['host', 'content-length', 'expect', CLIENT_HEADERS.requestId]);
const RESPONSE_MANAGED = new Set([CLIENT_HEADERS.requestId]);

/**
 * Names listed in a `Connection` header, lowercased, less the ones removed
 * anyway (`keep-alive`, `close` and other hop-by-hop names): undefined when
 * none is left, which is nearly always.
 */
function connectionTokens(value: string | string[] | undefined): Set<string> | undefined {
  if (value === undefined || value === 'keep-alive' || value === 'close') return undefined;
  const joined = Array.isArray(value) ? value.join(',') : value;
  let out: Set<string> | undefined;
  for (const token of joined.split(',')) {
    const t = token.trim().toLowerCase();
    if (t && t !== 'close' && !HOP_BY_HOP.has(t)) (out ??= new Set()).add(t);
  }
  return out;
}

/** Whether a header `name` (lowercased) passes, given the `Connection` tokens. */
function passes(name: string, managed: Set<string>, named: Set<string> | undefined): boolean {
  // ':path', ':authority' and the others: HTTP/2's pseudo-headers (a gateway served over HTTP/2) are the hop's own.
  return !HOP_BY_HOP.has(name) && !managed.has(name) && !name.startsWith(PREFIX) && !named?.has(name) && name.charCodeAt(0) !== 58;
}

function copyHeaders(
  from: Record<string, string | string[] | undefined>,
  managed: Set<string>,
): Record<string, string | string[]> {
  const named = connectionTokens(from.connection);
  const out: Record<string, string | string[]> = {};
  for (const name in from) {
    const value = from[name];
    // Node and undici hand us lowercased names.
    if (value !== undefined && passes(name, managed, named)) out[name] = value;
  }
  return out;
}

/**
 * The headers every copy of `req` shares, as a flat `[name, value, …]` list
 * (what undici takes with the least work): the client's end-to-end headers,
 * less hop-by-hop ones and any `x-redundant-*` a client sent, plus
 * `X-Forwarded-*` and the minted request id. The client's own
 * `X-Forwarded-*` (and `Forwarded`) pass only when `trust` says a load
 * balancer in front set them; otherwise this gateway's view replaces them.
 */
export function forwardRequestHeaders(req: IncomingMessage, requestId: string, trust = false): string[] {
  const from = req.headers;
  const named = connectionTokens(from.connection);
  const out: string[] = [];
  let proto = false;
  let host = false;
  for (const name in from) {
    const value = from[name];
    if (value === undefined || name === 'x-forwarded-for' || !passes(name, REQUEST_MANAGED, named)) continue;
    if (!trust && (name === 'x-forwarded-proto' || name === 'x-forwarded-host' || name === 'forwarded')) continue;
    if (typeof value === 'string') out.push(name, value);
    else if (Array.isArray(value)) for (const v of value) out.push(name, v);
    // A middleware before the proxy may have set a number: undici would have stringified it.
    else out.push(name, String(value));
    if (name === 'x-forwarded-proto') proto = true;
    else if (name === 'x-forwarded-host') host = true;
  }
  const prior = trust ? from['x-forwarded-for'] : undefined;
  const chain = Array.isArray(prior) ? prior.join(', ') : prior;
  const remote = req.socket?.remoteAddress;
  const forwardedFor = remote ? (chain ? `${chain}, ${remote}` : remote) : chain;
  if (forwardedFor) out.push('x-forwarded-for', forwardedFor);
  // A front load balancer may already have set these: keep its view.
  if (!proto) out.push('x-forwarded-proto', (req.socket as { encrypted?: boolean } | undefined)?.encrypted ? 'https' : 'http');
  // An absolute-form target names the host itself (its Host header is to be
  // ignored, RFC 9112 §3.2.2); over HTTP/2 the client's host is its `:authority`.
  const authority = targetAuthority(req.url) ?? from.host ?? from[':authority'];
  if (!host && typeof authority === 'string') out.push('x-forwarded-host', authority);
  out.push(CLIENT_HEADERS.requestId, requestId);
  return out;
}

/** The upstream's response headers as the client may see them. */
export function forwardResponseHeaders(headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  return copyHeaders(headers, RESPONSE_MANAGED);
}

/** Removes every `name` (lowercase) from a flat [name, value, …] list, in place. */
export function dropHeader(flat: string[], name: string): void {
  for (let i = flat.length - 2; i >= 0; i -= 2) if (flat[i] === name) flat.splice(i, 2);
}

/** A transfer coding other than `chunked` in a `Transfer-Encoding` header (the first), or undefined. */
export function otherCoding(value: string | string[] | undefined): string | undefined {
  if (value === undefined) return undefined;
  for (const coding of (Array.isArray(value) ? value.join(',') : value).split(',')) {
    const name = coding.trim().toLowerCase();
    if (name !== '' && name !== 'chunked') return name;
  }
  return undefined;
}

/** The authority of an absolute-form request target (`http://shop.example/x`), or undefined. */
function targetAuthority(url: string | undefined): string | undefined {
  if (url === undefined || url.startsWith('/') || !/^https?:\/\//i.test(url)) return undefined;
  try {
    return new URL(url).host || undefined;
  } catch {
    return undefined;
  }
}
