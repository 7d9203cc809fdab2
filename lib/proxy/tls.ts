import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import { createSecureContext, type TLSSocket } from 'node:tls';
import { buildConnector, Pool } from 'undici';
import { codes, RedundantProxyError } from '../errors.js';
import { field, optional, parseOptions, refuse, string, type Schema } from '../schema.js';
import type { Upstream, UpstreamTls } from './options.js';

// How the proxy reaches its upstreams: one undici Pool each, over TLS for an
// `https:` upstream (the proxy's `tls` and the upstream's own, merged field
// by field), and over HTTP/2 when asked. The TLS settings are checked here at
// construction, so that a CA file that holds no certificate or a key that
// does not match its certificate is an option error, not a failed copy at the
// first request; an error never shows a key (or any PEM) it was given.

const FIELDS = ['ca', 'cert', 'key', 'rejectUnauthorized', 'servername'] as const;
type TlsField = (typeof FIELDS)[number];
const SHAPE = `must be { ${FIELDS.join('?, ')}? }`;

const PEM = 'must be PEM text (a string or Buffer), or a non-empty array of them';
const isPem = (v: unknown): boolean => typeof v === 'string' || Buffer.isBuffer(v) || (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'string' || Buffer.isBuffer(x)));
/** A PEM field, never shown in an error: a key is a secret, and a certificate is pages of noise. */
const pem = () => optional(field<UpstreamTls['ca']>(PEM, isPem, { secret: true }));

const isHostName = (s: string): boolean => isIP(s) === 0 && s.length <= 253 && /^[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$/.test(s);

const TLS: Schema<UpstreamTls> = {
  ca: pem(),
  cert: pem(),
  key: pem(),
  rejectUnauthorized: optional(field<boolean>('must be true or false', (v) => typeof v === 'boolean')),
  // SNI carries host names only: an IP address is not sent, and Node warns.
  servername: optional(string('must be a DNS host name (not an IP address)', isHostName)),
};

/** One level's `tls` (the proxy's, or an upstream's) checked for its shape; `undefined` when absent. */
export function parseTls(value: unknown, name: string): UpstreamTls | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) refuse(name, SHAPE, value);
  // Before parseOptions, whose refusal of an unknown key shows its value:
  // `privateKey: '-----BEGIN PRIVATE KEY…'` must not end up in a log.
  for (const key of Object.keys(value)) {
    if (!(FIELDS as readonly string[]).includes(key)) refuse(`${name}.${key}`, `is not a TLS option (known: ${FIELDS.join(', ')})`, (value as Record<string, unknown>)[key], true);
  }
  const parsed = parseOptions(TLS, value, name);
  for (const key of FIELDS) if (parsed[key] === undefined) delete parsed[key];
  return parsed;
}

/** An upstream's own `http2`, checked. */
export function parseHttp2(value: unknown, name: string): boolean | undefined {
  if (value !== undefined && typeof value !== 'boolean') refuse(name, 'must be true or false', value);
  return value;
}

/**
 * The upstreams with their transport settled: the proxy's `tls` and `http2`
 * under each `https:` upstream's own, checked together. `upstreams` carry
 * their own settings (as `parseTls` and `parseHttp2` read them), in the
 * order of the `upstreams` option.
 */
export function settleTransport(upstreams: readonly Upstream[], proxyTls: UpstreamTls | undefined, proxyHttp2: boolean | undefined): Upstream[] {
  const secure = (u: Upstream) => u.origin.startsWith('https:');
  if (!upstreams.some(secure)) {
    if (proxyTls !== undefined) refuse('tls', 'applies to https: upstreams, and none is', proxyTls);
    if (proxyHttp2 === true) refuse('http2', 'applies to https: upstreams, and none is (undici speaks HTTP/2 to an upstream over TLS only)', proxyHttp2);
  }
  return upstreams.map((u, i) => {
    const name = `upstreams[${i}]`;
    if (!secure(u)) {
      if (u.tls !== undefined) refuse(`${name}.tls`, `needs an https: upstream (this one is ${u.origin})`, u.tls);
      if (u.http2 === true) refuse(`${name}.http2`, `needs an https: upstream (this one is ${u.origin}): HTTP/2 is agreed on in the TLS handshake, and cleartext HTTP/2 (h2c) is not offered`, true);
      return { ...u, tls: undefined, http2: false };
    }
    const own = u.tls ?? {};
    const merged: UpstreamTls = { ...proxyTls, ...own };
    const from = (key: TlsField) => (key in own ? `${name}.tls.${key}` : `tls.${key}`);
    checkTls(merged, from);
    return { ...u, tls: Object.keys(merged).length > 0 ? merged : undefined, http2: u.http2 ?? proxyHttp2 ?? false };
  });
}

/** What Node would refuse, or ignore, at the first connection: refused now, under the option's name. */
function checkTls(tls: UpstreamTls, from: (key: TlsField) => string): void {
  const list = (v: NonNullable<UpstreamTls['ca']>): Array<string | Buffer> => (Array.isArray(v) ? v : [v]);
  // Node skips what is not a certificate in `ca`: every upstream would then fail verification.
  if (tls.ca !== undefined && !list(tls.ca).every(holdsCertificates)) refuse(from('ca'), 'must hold PEM certificates (-----BEGIN CERTIFICATE-----)', tls.ca, true);
  if (tls.cert !== undefined && tls.key === undefined) refuse(from('cert'), 'needs `key` too: a client certificate is shown with its private key', tls.cert, true);
  if (tls.key !== undefined && tls.cert === undefined) refuse(from('key'), 'needs `cert` too: a client certificate is shown with its private key', tls.key, true);
  if (tls.cert === undefined) return;
  if (!list(tls.cert).every(holdsCertificates)) refuse(from('cert'), 'must hold a PEM certificate (-----BEGIN CERTIFICATE-----)', tls.cert, true);
  try {
    createSecureContext({ cert: tls.cert, key: tls.key });
  } catch (err) {
    // OpenSSL's reason names no content; its code says which check failed.
    const mismatch = (err as { code?: string }).code === 'ERR_OSSL_X509_KEY_VALUES_MISMATCH';
    refuse(from('key'), mismatch ? 'does not match `cert` (not the private key of that certificate)' : 'must be an unencrypted PEM private key', tls.key, true);
  }
}

function holdsCertificates(pemText: string | Buffer): boolean {
  const blocks = String(pemText).match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
  if (!blocks) return false;
  try {
    for (const block of blocks) new X509Certificate(block);
    return true;
  } catch {
    return false;
  }
}

/**
 * Most requests in flight on one HTTP/2 connection (undici's default for
 * `maxConcurrentStreams`; the upstream's SETTINGS may lower it). The Pool
 * opens a further connection only past it.
 */
const H2_STREAMS = 100;

/** The connection pool of one upstream. */
export function upstreamPool(u: Upstream, connections: number): Pool {
  const common = { connections, keepAliveTimeout: 10_000 };
  if (!u.http2) return new Pool(u.origin, { ...common, pipelining: 1, ...(u.tls ? { connect: { ...u.tls } } : {}) });
  // undici's `pipelining` (1 by default) also bounds its HTTP/2 streams per
  // connection: left at 1, every request in flight would open a connection.
  // Raised, it would pipeline HTTP/1.1 on a connection where the upstream
  // chose HTTP/1.1 (a loser stopped there takes the requests queued behind
  // it down with its connection): so such a connection is refused instead.
  const connect = buildConnector({ ...u.tls, allowH2: true });
  return new Pool(u.origin, {
    ...common,
    // Each connection carries up to H2_STREAMS copies: fewer connections
    // hold as many copies in flight (`maxInFlight` is at most `connections`).
    connections: Math.ceil(connections / H2_STREAMS),
    allowH2: true,
    maxConcurrentStreams: H2_STREAMS,
    pipelining: H2_STREAMS,
    connect(options, callback) {
      connect(options, (err, socket) => {
        if (err) return callback(err, null);
        if ((socket as TLSSocket).alpnProtocol === 'h2') return callback(null, socket);
        socket!.destroy();
        callback(new RedundantProxyError(codes.UPSTREAM_NOT_H2, `upstream "${u.id}" did not choose HTTP/2 in the TLS handshake (ALPN), and it is set to http2: true`, { status: 502 }), null);
      });
    },
  });
}
