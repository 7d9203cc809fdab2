import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import { STATUS_CODES } from 'node:http';
import { codes, RedundantProxyError } from '../errors.js';
import { REAL_TIME, type Scheduler, unref } from '../time.js';
import { CLIENT_HEADERS, H, PREFIX } from '../wire/protocol.js';
import { forwardRequestHeaders } from './headers.js';

// WebSocket (and any other `Upgrade`) passthrough. An upgraded connection is
// a two-way byte stream that lives for minutes: there is nothing to race and
// nothing to choose, so it goes to ONE upstream, picked by the proxy as a
// read's first copy would be. This file is the tunnel: the handshake sent on
// with the same header rules as a copy (hop-by-hop headers dropped except the
// upgrade itself, `x-redundant-*` from the client removed, X-Forwarded-* and
// the request id added), the upstream's answer written back as it came, and
// the two sockets piped until either side ends.

/** What a client may send before the upstream answered its upgrade, kept for the upstream. */
const MAX_EARLY_BYTES = 64 * 1024;

/** Where one upgrade goes. */
export interface UpgradeTarget {
  /** The upstream's id, for the outcome. */
  id: string;
  /** What the client is told of it (`x-redundant-served-by`, error messages). @default id */
  label?: string;
  /** The upstream's URL; its path is a prefix for the request's. */
  url: URL;
}

export interface UpgradeOptions {
  requestId: string;
  /** The request target, checked (lib/proxy/admit.ts `requestTarget()`). @default req.url */
  path?: string;
  /** Trust the client's X-Forwarded-* (a load balancer in front sets them). */
  trustForwarded: boolean;
  /** How long the upstream may take to answer the handshake, in ms. */
  timeout: number;
  /** TLS options for an `https:` upstream (passed to `https.request`). */
  tls?: https.RequestOptions;
  /** The proxy's scheduler (the handshake's timeout). */
  scheduler?: Scheduler;
  /** Called once the tunnel is up, or failed before it was: for events and metrics. */
  onDone?: (outcome: UpgradeOutcome) => void;
}

export type UpgradeOutcome =
  | { kind: 'upgraded'; upstreamId: string }
  /** The upstream answered without switching protocols: its answer went to the client as it was. */
  | { kind: 'refused'; upstreamId: string; status: number }
  | { kind: 'failed'; upstreamId: string; error: RedundantProxyError };

/** The request's target on `upstream`: its path prefix, then the client's path and query. */
function targetPath(upstream: URL, url: string | undefined): string {
  const prefix = upstream.pathname === '/' ? '' : upstream.pathname.replace(/\/$/, '');
  const rest = url && url.startsWith('/') ? url : `/${url ?? ''}`;
  return prefix + rest;
}

/**
 * Writes an error answer on a socket that is still raw HTTP (no upgrade
 * happened): status, JSON body with the error's `code`, `connection: close`;
 * then ends it.
 */
export function writeSocketError(socket: Duplex, err: RedundantProxyError, requestId: string | null): void {
  // The server let go of the socket when it emitted `upgrade`: an error on it
  // (the client resets) would otherwise have no listener and end the process.
  socket.on('error', () => socket.destroy());
  if (socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  const body = JSON.stringify(requestId ? { ...err.toJSON(), requestId } : err.toJSON());
  const head = [
    `HTTP/1.1 ${err.status} ${STATUS_CODES[err.status] ?? ''}`,
    'content-type: application/json; charset=utf-8',
    `content-length: ${Buffer.byteLength(body)}`,
    'cache-control: no-store',
    'connection: close',
  ];
  if (requestId) head.push(`${CLIENT_HEADERS.requestId}: ${requestId}`);
  socket.end(`${head.join('\r\n')}\r\n\r\n${body}`);
}

/** A response head as raw HTTP/1.1: the status line and the headers as they came (`rawHeaders`). */
function rawHead(status: number, message: string | undefined, rawHeaders: string[], extra: string[]): string {
  const lines = [`HTTP/1.1 ${status} ${message ?? STATUS_CODES[status] ?? ''}`];
  for (let i = 0; i < rawHeaders.length; i += 2) lines.push(`${rawHeaders[i]}: ${rawHeaders[i + 1]}`);
  for (let i = 0; i < extra.length; i += 2) lines.push(`${extra[i]}: ${extra[i + 1]}`);
  return `${lines.join('\r\n')}\r\n\r\n`;
}

/**
 * Sends the upgrade `req` (with its first bytes `head`) to `target` and, once
 * the upstream switched protocols, pipes the client's `socket` and the
 * upstream's together. Never throws: a failure before the upstream answered
 * is a JSON error on the client's socket (502 `RP_ERR_UPSTREAMS_FAILED`, 504
 * `RP_ERR_TIMEOUT`); after it, both sockets are destroyed.
 */
export function tunnel(req: IncomingMessage, socket: Duplex, head: Buffer, target: UpgradeTarget, options: UpgradeOptions): void {
  let settled = false;
  const label = target.label ?? target.id;
  const done = (outcome: UpgradeOutcome) => {
    if (settled) return;
    settled = true;
    options.onDone?.(outcome);
  };
  const headers = forwardRequestHeaders(req, options.requestId, options.trustForwarded);
  // The upgrade itself is hop-by-hop, and asked for again on this hop.
  headers.push('connection', 'upgrade', 'upgrade', String(req.headers.upgrade));
  const secure = target.url.protocol === 'https:' || target.url.protocol === 'wss:';
  const request = (secure ? https : http).request({
    ...(secure ? options.tls : undefined),
    protocol: secure ? 'https:' : 'http:',
    hostname: target.url.hostname.replace(/^\[|\]$/g, ''),
    port: target.url.port || (secure ? 443 : 80),
    method: req.method,
    path: targetPath(target.url, options.path ?? req.url),
    headers,
    agent: false,
    setHost: true,
  });
  const fail = (err: RedundantProxyError) => {
    request.destroy();
    if (!settled) writeSocketError(socket, err, options.requestId);
    else socket.destroy();
    done({ kind: 'failed', upstreamId: target.id, error: err });
  };
  const time = options.scheduler ?? REAL_TIME;
  const timer = time.setTimeout(
    () => fail(new RedundantProxyError(codes.TIMEOUT, `upstream ${label} did not answer the upgrade within ${options.timeout} ms`, { status: 504 })),
    options.timeout,
  );
  unref(timer);
  const clearTimer = () => time.clearTimeout(timer);
  // The client may leave while the handshake is on its way: its socket is
  // read meanwhile (else its end would go unseen), and what it sends before
  // the answer (a client may pipeline its first frames) is kept, bounded, for
  // the upstream.
  const early: Buffer[] = head.length > 0 ? [head] : [];
  let earlyBytes = head.length;
  const clientGone = () => {
    clearTimer();
    request.destroy();
  };
  const onEarly = (chunk: Buffer) => {
    earlyBytes += chunk.length;
    if (earlyBytes > MAX_EARLY_BYTES) socket.destroy();
    else early.push(chunk);
  };
  const stopWatching = () => {
    socket.off('data', onEarly);
    socket.off('end', clientGone);
    socket.off('close', clientGone);
    socket.pause();
  };
  socket.on('data', onEarly);
  socket.once('end', clientGone);
  socket.once('close', clientGone);
  socket.on('error', clientGone);

  request.on('error', (err) => {
    clearTimer();
    if (settled) return;
    fail(new RedundantProxyError(codes.UPSTREAMS_FAILED, `upstream ${label} failed the upgrade: ${err.message}`, { status: 502, cause: err }));
  });

  request.on('upgrade', (res, upstream, upstreamHead) => {
    clearTimer();
    stopWatching();
    if (socket.destroyed) {
      upstream.destroy();
      return;
    }
    upstream.on('error', () => socket.destroy());
    socket.on('error', () => upstream.destroy());
    upstream.on('close', () => socket.destroy());
    socket.on('close', () => upstream.destroy());
    // The switch's own headers (Connection, Upgrade, Sec-WebSocket-*) go as they came; the request id is the proxy's.
    const rawHeaders = ownHeaders(res.rawHeaders, (name) => name === CLIENT_HEADERS.requestId || name.startsWith(PREFIX));
    socket.write(rawHead(res.statusCode ?? 101, res.statusMessage, rawHeaders, [CLIENT_HEADERS.requestId, options.requestId, H.servedBy, label]));
    if (upstreamHead.length > 0) socket.write(upstreamHead);
    for (const chunk of early) upstream.write(chunk);
    upstream.pipe(socket);
    socket.pipe(upstream);
    done({ kind: 'upgraded', upstreamId: target.id });
  });

  // The upstream answered without switching protocols (a 401, a 404, a 426):
  // the client gets that answer as it came, then the connection closes.
  request.on('response', (res) => {
    clearTimer();
    stopWatching();
    done({ kind: 'refused', upstreamId: target.id, status: res.statusCode ?? 502 });
    // The body is sent as it comes and the connection closes after it.
    const rawHeaders = ownHeaders(res.rawHeaders, (name) => name === 'connection' || name === 'keep-alive' || name === 'transfer-encoding' || name === CLIENT_HEADERS.requestId || name.startsWith(PREFIX));
    if (socket.destroyed) {
      res.destroy();
      return;
    }
    socket.on('error', () => res.destroy());
    socket.write(rawHead(res.statusCode ?? 502, res.statusMessage, rawHeaders, ['connection', 'close', CLIENT_HEADERS.requestId, options.requestId, H.servedBy, label]));
    res.on('error', () => socket.destroy());
    res.pipe(socket);
  });

  // Bytes after the client's handshake (`head`) are the new protocol's: they
  // go to the upstream once it switched, never as this request's body.
  request.end();
}

/** An upstream's raw [name, value, …] headers less those `drop` names (lowercase). */
function ownHeaders(raw: string[], drop: (name: string) => boolean): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) if (!drop(raw[i]!.toLowerCase())) out.push(raw[i]!, raw[i + 1]!);
  return out;
}
