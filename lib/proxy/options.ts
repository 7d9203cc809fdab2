import type { IncomingMessage } from 'node:http';
import type { SessionStore } from '../store/types.js';
import type { PrometheusOptions } from './prometheus.js';

// redundantProxy()'s options: each documented with its default. They are
// checked, and their defaults filled in, by lib/proxy/options-schema.ts.
export { defaultAccept, defaultIsUpdate, resolveOptions } from './options-schema.js';
import type { UpstreamSpec, UpstreamTlsOptions, UpstreamResponse, HedgeOptions, SelectAnswer, SelectState, SelectFunction, SelectOption, CancelInfo, EjectionOptions, RetryOptions, HealthCheckOptions, IdempotencyOptions, CopyInfo, OutgoingCopy, AdoptedAnswer } from './option-types.js';
export type { UpstreamSpec, UpstreamTlsOptions, UpstreamResponse, HedgeOptions, SelectAnswer, SelectState, SelectFunction, SelectOption, CancelInfo, EjectionOptions, RetryOptions, HealthCheckOptions, IdempotencyOptions, CopyInfo, OutgoingCopy, AdoptedAnswer } from './option-types.js';

export interface ProxyOptions {
  /**
   * The replicas of the application server, as URLs or `{ id, url }`.
   * A URL string gets its `host` as id.
   * @example ['http://10.0.0.1:3000', { id: 'b', url: 'http://10.0.0.2:3000' }]
   */
  upstreams: ReadonlyArray<string | UpstreamSpec>;
  /**
   * TLS settings for every `https:` upstream (CA, client certificate and
   * key, `rejectUnauthorized`, `servername`); an upstream's own `tls` wins
   * field by field. Refused when no upstream is `https:`.
   * @default Node's defaults: the built-in CA list, no client certificate
   * @example { ca: readFileSync('internal-ca.pem'), cert: readFileSync('gw.pem'), key: readFileSync('gw-key.pem') }
   */
  tls?: UpstreamTlsOptions;
  /**
   * Speak HTTP/2 to every `https:` upstream (undici's `allowH2`): one TLS
   * connection per upstream carries many requests at once, and a copy that
   * loses a race is stopped by resetting its stream while the connection
   * stays open. The upstream must choose `h2` in the TLS handshake (ALPN);
   * a connection on which it chose HTTP/1.1 fails with
   * `RP_ERR_UPSTREAM_NOT_H2`. Cleartext HTTP/2 (h2c) is not offered: an
   * `http:` upstream that asks for it is refused. Per upstream: its `http2`.
   * Refused when no upstream is `https:`.
   * @default false
   */
  http2?: boolean;
  /**
   * Where copies, adoptions and sessions are recorded. Give the workers the
   * same store. A store you pass is yours to close; the default one is closed
   * by `proxy.close()`.
   * @default a new `MemorySessionStore()`
   */
  store?: SessionStore;
  /**
   * How many copies of each read to send, each to a different upstream.
   * @default every upstream
   */
  copies?: number;
  /** @default { delay: 0 }: every copy at once */
  hedge?: HedgeOptions;
  /**
   * Milliseconds for the whole request: without an acceptable answer by then,
   * the client gets `504`; a body still streaming then is cut off.
   * @default 30000
   */
  timeout?: number;
  /**
   * Milliseconds a copy may wait for its answer's head (Envoy's
   * `per_try_timeout`): a copy with no head by then is given up (stopped,
   * reported `failed` with error `'per-try-timeout'`, counted against its
   * upstream) and, within the hedge budget, replaced by a copy to an
   * upstream this request has not tried (an update's only to an upstream
   * that runs the worker). Below `timeout`; off when absent. An update that
   * gave a copy up seals itself before it adopts an answer that did not
   * commit (docs/operations.md, "Failure handling").
   * @default undefined (off)
   * @example 2000
   */
  perTryTimeout?: number;
  /**
   * Retries a copy whose connection failed before the request was sent
   * (connection refused, reset on accept, no address): to the same upstream,
   * after a backoff, within the request's `timeout`. Never a copy whose
   * request went out: its failure is the copy's, as without retries.
   * `false` turns it off.
   * @default false
   * @example { attempts: 2, backoff: 25 }
   */
  retry?: RetryOptions | false;
  /**
   * Active health checks: each upstream is asked `path` every `interval` ms
   * through the proxy's own connection pools; one that fails
   * `unhealthyThreshold` probes in a row receives no copies until it passes
   * `healthyThreshold` in a row (unless every upstream is unhealthy: then
   * health is not looked at). `false` turns it off.
   * @default false
   * @example { path: '/healthz', interval: 5000 }
   */
  healthCheck?: HealthCheckOptions | false;
  /**
   * Whether a response may win the race, judged on its status and headers.
   * @default status < 500
   */
  accept?: (response: UpstreamResponse) => boolean;
  /**
   * How a read's answer is chosen among the acceptable ones (updates always
   * take the answer of the copy that committed):
   * - `'first'`: the first acceptable answer wins and its body is streamed;
   * - `{ quorum: k }`: the first answer that `k` copies gave alike (same
   *   status and body bytes) wins; `k` copies leave at once, a further one
   *   after the hedge delay, or at once when the copies out all answered or
   *   failed without a quorum. When no `k` can agree any
   *   more, the client gets `502` `RP_ERR_NO_QUORUM`;
   * - a function ({@link SelectFunction}) chooses among the complete answers.
   * With a quorum or a function, answers are buffered whole to be compared,
   * up to `maxBodySize` (a larger one is `rejected`: it does not vote). At
   * the `timeout`, a function gets a last call with `pending: 0`.
   * @default 'first'
   */
  select?: SelectOption;
  /**
   * Whether a request updates data. An update is copied only to upstreams
   * that have shown they run `redundantWorker()` (to a single upstream until
   * two have), and exactly one of its copies may commit.
   * @default method is not GET, HEAD, OPTIONS or TRACE
   */
  isUpdate?: (req: IncomingMessage) => boolean;
  /**
   * HMAC key shared with the workers; copies then carry a signature that
   * workers verify. Without it workers trust the copy headers as they are.
   */
  secret?: string | Buffer;
  /**
   * Largest request body, in bytes, buffered to be copied; above it the
   * client gets `413` before any copy leaves. Also the largest answer that
   * `select` (a quorum or a function) buffers to compare.
   * @default 1048576 (1 MiB)
   */
  maxBodySize?: number;
  /**
   * Milliseconds a request body may take to arrive whole; a client still
   * sending then gets `408` `RP_ERR_BODY_TIMEOUT` and its connection closed
   * (Node's own `requestTimeout` is 300 s).
   * @default 30000
   */
  bodyTimeout?: number;
  /**
   * Milliseconds a request body may stall without a byte (`408`
   * `RP_ERR_BODY_TIMEOUT`).
   * @default 10000
   */
  bodyIdleTimeout?: number;
  /**
   * Most bytes of request bodies buffered at once, over all requests (a
   * declared `Content-Length` counts in full from the start): beyond it a
   * request gets `503` `RP_ERR_OVERLOADED` before its body is read. At least
   * `maxBodySize`.
   * @default 67108864 (64 MiB)
   */
  maxBufferedBytes?: number;
  /**
   * Most connections kept open to each upstream.
   * @default 1024
   */
  connections?: number;
  /**
   * The circuit breaker (Envoy's `max_requests`): most copies in flight to
   * one upstream at once. An upstream at it gets no further copies until one
   * ends (a read then goes to the others); when every upstream the request
   * may use is at it, the request gets `503` `RP_ERR_UPSTREAM_BUSY` at once
   * instead of queueing behind copies that may hang until the `timeout`. At
   * most `connections`, so that a copy never waits in a connection pool's
   * queue: requests hung on one slow path cannot starve the others until
   * they fill it.
   * @default connections
   */
  maxInFlight?: number;
  /**
   * Whether the client's `X-Forwarded-For`, `-Proto` and `-Host` are to be
   * believed: true only when every client reaches this gateway through a
   * load balancer that sets them (and drops what its own clients sent).
   * Otherwise any client could name itself or its scheme: they are replaced
   * by what this gateway sees (the peer's address, the socket's scheme, the
   * `Host`), and the session cookie's `Secure` attribute follows the socket.
   * @default false
   */
  trustForwarded?: boolean;
  /**
   * Where the proxy finds the client's session id: a cookie, or a request
   * header. Without one it mints an id, and sends it back (cookie or response
   * header) only when the adopted copy wrote session data. `false` turns
   * sessions off.
   * @default { cookie: 'rp_session' }
   */
  session?: SessionOptions | false;
  /**
   * Milliseconds the proxy waits for the store when an answer must wait for
   * its bookkeeping (the adopted copy changed the session). Past it the answer
   * goes out anyway and an `error` event reports the failure. Bookkeeping off
   * the answer's path is reported failed once it is this late (checked every
   * quarter of it, with one timer for all of them).
   * @default 1000
   */
  storeTimeout?: number;
  /**
   * Called for each copy of an update stopped because another copy committed
   * (after its request was aborted: a copy that answers `lost` within the
   * short grace stopped by itself and is not cancelled), for example to send
   * a compensating call.
   * Awaited for at most `cancelTimeout`; a hook that throws is an `error`
   * event, never a failed request.
   */
  onCancel?: (info: CancelInfo) => void | Promise<void>;
  /** @default 5000 */
  cancelTimeout?: number;
  /**
   * `Idempotency-Key` on updates: a retry with the same key gets the first
   * answer replayed; the same key still in flight gets `409`; with another
   * body, `422`. `false` turns it off (the header then passes through).
   * @default {}
   */
  idempotency?: IdempotencyOptions | false;
  /**
   * Outlier ejection: an upstream that failed `consecutiveFailures` copies in
   * a row receives no copies for `baseEjectionTime`, then is probed back with
   * ordinary copies (which race healthy ones); failing its first judged copy
   * ejects it again for twice as long. `false` turns it off.
   * @default { consecutiveFailures: 5, baseEjectionTime: 30000, maxEjectionTime: 300000, maxEjectedPercent: 50 }
   */
  ejection?: EjectionOptions | false;
  /**
   * Also count requests, copies, hedges, race durations and ejections in a
   * prom-client registry (prom-client must be installed).
   * @example { registry: promClient.register, labels: { route: 'orders' } }
   */
  prometheus?: PrometheusOptions;
  /**
   * Changes each copy on its way out: its `path` and `headers` (not its
   * method or body). Runs for every copy as it leaves, hedges too, before
   * the copy is signed. It must be synchronous: a copy leaves when its hedge
   * delay says, and waits for nothing. A hook that throws, or sets an
   * `x-redundant-*` header, fails the request: `500` `RP_ERR_HOOK_FAILED`,
   * and an `error` event (source `hook`).
   * @example
   * rewriteCopy: (c) => { c.headers.authorization = `Bearer ${token}`; c.path = c.path.replace(/^\/api/, ''); }
   */
  rewriteCopy?: (copy: OutgoingCopy) => void;
  /**
   * Changes the adopted answer's head before it goes to the client: its
   * `status` and `headers` (e.g. a `Location` or a `Set-Cookie` domain).
   * May be async: the answer waits for it, within the request's `timeout`.
   * Not called for an upstream's 5xx passed through when no copy answered
   * acceptably, nor for the proxy's own error answers. A hook that throws
   * or rejects: `500` `RP_ERR_HOOK_FAILED` (for an update that committed:
   * `502` `RP_ERR_ANSWER_LOST`), and an `error` event (source `hook`).
   * @example
   * rewriteAnswer: (a) => { if (typeof a.headers.location === 'string') a.headers.location = a.headers.location.replace('http://app:3000', 'https://example.com'); }
   */
  rewriteAnswer?: (answer: AdoptedAnswer) => void | Promise<void>;
  /**
   * Milliseconds that `close()` lets the WebSocket (and other `Upgrade`)
   * tunnels of `proxy.upgrade` go on before it ends them (their sockets
   * closed; a tunnel that ends by itself earlier is not waited for).
   * @default 0: ended once the requests in flight are done
   */
  tunnelGrace?: number;
  /** Clock, for tests. @default performance.now */
  now?: () => number;
}

export interface SessionOptions {
  /** Cookie carrying the session id. @default 'rp_session' unless `header` is set */
  cookie?: string;
  /** Request header carrying the session id (e.g. `x-session-id`); a minted id is returned in the same response header. */
  header?: string;
  /**
   * The cookie's `Secure` attribute: `'auto'` sets it when the client came
   * over TLS (the socket, or `X-Forwarded-Proto: https` with `trustForwarded`).
   * @default 'auto'
   */
  secure?: boolean | 'auto';
  /** The cookie's `SameSite` attribute (`'None'` needs `secure: true`). @default 'Lax' */
  sameSite?: 'Strict' | 'Lax' | 'None';
  /** The cookie's `Domain` attribute. @default none: the cookie goes back to this host only */
  domain?: string;
  /** The cookie's `Path` attribute. @default '/' */
  path?: string;
  /** The cookie's `Max-Age`, in seconds. @default none: a cookie for the browser session */
  maxAge?: number;
}

/** The session options, checked. */
export interface ResolvedSession {
  cookie: string | undefined;
  header: string | undefined;
  secure: boolean | 'auto';
  sameSite: 'Strict' | 'Lax' | 'None';
  domain: string | undefined;
  path: string;
  maxAge: number | undefined;
}

export interface Upstream {
  id: string;
  /**
   * What clients are told of it (`x-redundant-served-by`, error messages):
   * its `id` when one was given, else `upstream-<n>` (its place in the list,
   * from 1): an id derived from the URL is its address, and clients learn no
   * topology.
   */
  label: string;
  origin: string;
  /** Path prefix from the upstream URL, without a trailing slash ('' for none). */
  prefix: string;
  /** TLS settings for its connections (the proxy's and its own, merged); none for `http:` or Node's defaults. */
  tls?: UpstreamTls;
  /** HTTP/2 over TLS to it. */
  http2?: boolean;
}

/** TLS settings as checked: what `tls.connect()` (and `https.request()`) take. */
export interface UpstreamTls {
  ca?: string | Buffer | Array<string | Buffer>;
  cert?: string | Buffer | Array<string | Buffer>;
  key?: string | Buffer | Array<string | Buffer>;
  rejectUnauthorized?: boolean;
  servername?: string;
}

export type ResolvedSelect = { kind: 'first' } | { kind: 'quorum'; quorum: number } | { kind: 'custom'; choose: SelectFunction };

export interface ResolvedOptions {
  upstreams: Upstream[];
  store: SessionStore;
  /** True when the proxy created the store and so closes it. */
  ownsStore: boolean;
  session: ResolvedSession | false;
  storeTimeout: number;
  onCancel: ((info: CancelInfo) => void | Promise<void>) | undefined;
  cancelTimeout: number;
  idempotency: { scope: ((req: IncomingMessage) => string | undefined) | undefined; ttl: number; maxAnswerSize: number; wait: number } | false;
  ejection: Required<EjectionOptions> | false;
  prometheus: PrometheusOptions | undefined;
  copies: number;
  hedgeDelay: number | 'adaptive';
  maxExtraLoad: number;
  timeout: number;
  /** 0: off. */
  perTryTimeout: number;
  retry: Required<RetryOptions> | false;
  healthCheck: Required<HealthCheckOptions> | false;
  accept: (response: UpstreamResponse) => boolean;
  select: ResolvedSelect;
  isUpdate: (req: IncomingMessage) => boolean;
  secret: string | Buffer | undefined;
  trustForwarded: boolean;
  maxBodySize: number;
  bodyTimeout: number;
  bodyIdleTimeout: number;
  maxBufferedBytes: number;
  connections: number;
  maxInFlight: number;
  rewriteCopy: ((copy: OutgoingCopy) => void) | undefined;
  rewriteAnswer: ((answer: AdoptedAnswer) => void | Promise<void>) | undefined;
  tunnelGrace: number;
  now: () => number;
}
