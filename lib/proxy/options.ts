import type { IncomingMessage } from 'node:http';
import { InvalidOptionError, redacted } from '../errors.js';
import { MemorySessionStore } from '../store/memory.js';
import type { SessionStore } from '../store/types.js';
import { checkPrometheusOptions, type PrometheusOptions } from './prometheus.js';

/** An application server the proxy sends copies to. */
export interface UpstreamSpec {
  /** Short, stable name used in headers, events and metrics. Letters, digits and `._:-` only. */
  id: string;
  /** `http://` or `https://` origin, optionally with a path prefix prepended to every request path. */
  url: string;
}

/** What `accept()` is shown of an upstream's response (its head only; the body is not read). */
export interface UpstreamResponse {
  status: number;
  headers: Readonly<Record<string, string | string[] | undefined>>;
  upstream: string;
}

/** Hedging: hold back each further copy until a delay passes without an acceptable answer. */
export interface HedgeOptions {
  /**
   * Milliseconds between sending one copy and the next. `0` sends every copy
   * at once. `'adaptive'` follows a quantile of the route's recent latency,
   * 1 - `maxExtraLoad` / 2 (the p95 by default; within p50 and p99.9), as
   * Finagle's backup requests do.
   * @default 0
   */
  delay?: number | 'adaptive';
  /**
   * Cap on the extra copies that hedging may add, as a fraction of requests
   * (token bucket, as in gRPC retry throttling): `0.1` allows one extra copy
   * per ten requests on average. Copies sent at once (`delay: 0`) are not
   * hedges and are not capped.
   * @default 0.1 with an adaptive delay, unlimited with a fixed one
   */
  maxExtraLoad?: number;
}

/** What a `select` function is shown of each complete, acceptable answer to a read. */
export interface SelectAnswer {
  /** The upstream's id. */
  upstream: string;
  /** The copy's index, from 1. */
  index: number;
  status: number;
  headers: Readonly<Record<string, string | string[] | undefined>>;
  /** The whole body (answers are buffered, up to `maxBodySize`, to be compared). */
  body: Buffer;
}

/** What a `select` function is told besides the answers. */
export interface SelectState {
  /** Copies that may still answer: out now, or not sent yet. `0` means this is the last call. */
  pending: number;
  /** Copies of this request in all. */
  copies: number;
}

/**
 * Chooses the answer to adopt among the complete, acceptable answers so far
 * (called again as each copy answers or fails). Return one of `answers` to
 * adopt it, or `undefined` to wait for more; with nothing chosen once no copy
 * is pending, the client gets `502` `RP_ERR_NO_SELECTION`.
 */
export type SelectFunction = (answers: readonly SelectAnswer[], state: SelectState) => SelectAnswer | null | undefined;

/** How the answer of a read is chosen among its copies' answers. */
export type SelectOption = 'first' | { quorum: number } | SelectFunction;

/** What `onCancel` is told of a copy stopped because another copy of the update committed. */
export interface CancelInfo {
  requestId: string;
  /** The stopped copy. */
  duplicateId: string;
  upstream: string;
  /** The upstream whose copy committed. */
  committedBy: string;
  /** Aborted when `cancelTimeout` runs out: stop compensating work then. */
  signal: AbortSignal;
}

/** Outlier ejection: an upstream whose copies keep failing stops receiving copies for a while. */
export interface EjectionOptions {
  /**
   * Failed copies in a row that eject an upstream: a refused, reset or
   * malformed connection (a winner's body broken after its head too), a 5xx
   * answer, or a copy out for half the `timeout` or more and still waiting
   * for its answer (or, under `select`, the rest of its body) at `timeout`.
   * A copy stopped because another won counts neither way.
   * @default 5
   */
  consecutiveFailures?: number;
  /**
   * Milliseconds of the first ejection; each further one, until the upstream
   * passes its probation, lasts twice as long as the one before.
   * @default 30000
   */
  baseEjectionTime?: number;
  /** Longest ejection, in ms. @default 300000 */
  maxEjectionTime?: number;
  /**
   * Most upstreams ejected at once, as a percentage of all (rounded down):
   * copies always have somewhere to go. With `select: { quorum: k }`, at
   * least `k` always stay in.
   * @default 50
   */
  maxEjectedPercent?: number;
}

export interface IdempotencyOptions {
  /**
   * Who a key belongs to, so one client can never replay another's answer.
   * Return undefined to skip idempotency for this request.
   * @default the client's session id; else its Authorization header (hashed); else one anonymous scope
   */
  scope?: (req: IncomingMessage) => string | undefined;
  /**
   * Milliseconds an answer is kept for replay.
   * @default 86400000 (24 hours)
   */
  ttl?: number;
  /**
   * Largest answer body, in bytes, kept for replay. A larger committed answer
   * is replayed as `502` `RP_ERR_ANSWER_LOST`: applied, answer not kept.
   * @default 1048576 (1 MiB)
   */
  maxAnswerSize?: number;
  /**
   * Milliseconds a retry waits when the same key is still being processed
   * (another attempt holds it): it gets the outcome as soon as there is one,
   * or, after this, `409` `RP_ERR_IDEMPOTENCY_IN_FLIGHT` with `Retry-After`.
   * 0 answers the 409 at once.
   * @default 1000
   */
  wait?: number;
}

export interface ProxyOptions {
  /**
   * The replicas of the application server, as URLs or `{ id, url }`.
   * A URL string gets its `host` as id.
   * @example ['http://10.0.0.1:3000', { id: 'b', url: 'http://10.0.0.2:3000' }]
   */
  upstreams: ReadonlyArray<string | UpstreamSpec>;
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
  now: () => number;
}

const KNOWN = new Set(['upstreams', 'store', 'copies', 'hedge', 'timeout', 'accept', 'select', 'isUpdate', 'secret', 'maxBodySize', 'bodyTimeout', 'bodyIdleTimeout', 'maxBufferedBytes', 'connections', 'maxInFlight', 'trustForwarded', 'session', 'storeTimeout', 'onCancel', 'cancelTimeout', 'idempotency', 'ejection', 'prometheus', 'now']);
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const READ_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);
const ID = /^[A-Za-z0-9._:-]{1,64}$/;

export const defaultAccept = (r: UpstreamResponse): boolean => r.status < 500;
export const defaultIsUpdate = (req: IncomingMessage): boolean => !READ_METHODS.has(req.method ?? 'GET');

export function resolveOptions(options: ProxyOptions): ResolvedOptions {
  if (typeof options !== 'object' || options === null) throw new InvalidOptionError('options', 'must be an object', options);
  for (const key of Object.keys(options)) {
    if (!KNOWN.has(key)) throw new InvalidOptionError(key, `is not an option (known: ${[...KNOWN].join(', ')})`, (options as unknown as Record<string, unknown>)[key]);
  }
  const upstreams = resolveUpstreams(options.upstreams);
  const copies = options.copies ?? upstreams.length;
  if (!Number.isInteger(copies) || copies < 1 || copies > upstreams.length) {
    throw new InvalidOptionError('copies', `must be an integer from 1 to the number of upstreams (${upstreams.length})`, options.copies);
  }
  const hedge = options.hedge ?? {};
  if (typeof hedge !== 'object' || hedge === null) throw new InvalidOptionError('hedge', 'must be an object', hedge);
  for (const key of Object.keys(hedge)) {
    if (key !== 'delay' && key !== 'maxExtraLoad') throw new InvalidOptionError(`hedge.${key}`, 'is not an option (known: delay, maxExtraLoad)', (hedge as Record<string, unknown>)[key]);
  }
  const hedgeDelay = hedge.delay ?? 0;
  if (hedgeDelay !== 'adaptive' && !(typeof hedgeDelay === 'number' && Number.isFinite(hedgeDelay) && hedgeDelay >= 0)) {
    throw new InvalidOptionError('hedge.delay', "must be a number of milliseconds >= 0 or 'adaptive'", hedge.delay);
  }
  const maxExtraLoad = hedge.maxExtraLoad ?? (hedgeDelay === 'adaptive' ? 0.1 : Infinity);
  if (typeof maxExtraLoad !== 'number' || Number.isNaN(maxExtraLoad) || maxExtraLoad < 0) {
    throw new InvalidOptionError('hedge.maxExtraLoad', 'must be a number >= 0', hedge.maxExtraLoad);
  }
  const timeout = options.timeout ?? 30_000;
  if (!Number.isFinite(timeout) || timeout <= 0) throw new InvalidOptionError('timeout', 'must be a number of milliseconds > 0', options.timeout);
  const maxBodySize = options.maxBodySize ?? 1024 * 1024;
  if (!Number.isInteger(maxBodySize) || maxBodySize < 0) throw new InvalidOptionError('maxBodySize', 'must be an integer number of bytes >= 0', options.maxBodySize);
  const bodyTimeout = options.bodyTimeout ?? 30_000;
  if (!Number.isFinite(bodyTimeout) || bodyTimeout <= 0 || bodyTimeout > 2_147_483_647) throw new InvalidOptionError('bodyTimeout', 'must be a number of milliseconds > 0', options.bodyTimeout);
  const bodyIdleTimeout = options.bodyIdleTimeout ?? 10_000;
  if (!Number.isFinite(bodyIdleTimeout) || bodyIdleTimeout <= 0 || bodyIdleTimeout > 2_147_483_647) throw new InvalidOptionError('bodyIdleTimeout', 'must be a number of milliseconds > 0', options.bodyIdleTimeout);
  const maxBufferedBytes = options.maxBufferedBytes ?? 64 * 1024 * 1024;
  if (!Number.isSafeInteger(maxBufferedBytes) || maxBufferedBytes < maxBodySize) {
    throw new InvalidOptionError('maxBufferedBytes', `must be an integer number of bytes >= maxBodySize (${maxBodySize})`, options.maxBufferedBytes);
  }
  const connections = options.connections ?? 1024;
  if (!Number.isInteger(connections) || connections < 1) throw new InvalidOptionError('connections', 'must be an integer >= 1', options.connections);
  const maxInFlight = options.maxInFlight ?? connections;
  if (!Number.isInteger(maxInFlight) || maxInFlight < 1 || maxInFlight > connections) {
    throw new InvalidOptionError('maxInFlight', `must be an integer from 1 to connections (${connections})`, options.maxInFlight);
  }
  for (const fn of ['accept', 'isUpdate', 'now', 'onCancel'] as const) {
    if (options[fn] !== undefined && typeof options[fn] !== 'function') throw new InvalidOptionError(fn, 'must be a function', options[fn]);
  }
  const secret = options.secret;
  if (secret !== undefined && !((typeof secret === 'string' && secret.length >= 16) || (Buffer.isBuffer(secret) && secret.length >= 16))) {
    // Never the secret itself in the message: option errors end up in logs.
    throw new InvalidOptionError('secret', 'must be a string or Buffer of at least 16 characters/bytes', redacted(secret));
  }
  const store = options.store;
  if (store !== undefined && (typeof store !== 'object' || store === null || typeof store.recordCopy !== 'function' || typeof store.recordAdoption !== 'function')) {
    throw new InvalidOptionError('store', 'must implement SessionStore', store);
  }
  const storeTimeout = options.storeTimeout ?? 1000;
  if (!Number.isFinite(storeTimeout) || storeTimeout <= 0) throw new InvalidOptionError('storeTimeout', 'must be a number of milliseconds > 0', options.storeTimeout);
  const cancelTimeout = options.cancelTimeout ?? 5000;
  if (!Number.isFinite(cancelTimeout) || cancelTimeout <= 0) throw new InvalidOptionError('cancelTimeout', 'must be a number of milliseconds > 0', options.cancelTimeout);
  return {
    upstreams,
    onCancel: options.onCancel,
    cancelTimeout,
    idempotency: resolveIdempotency(options.idempotency),
    ejection: resolveEjection(options.ejection),
    prometheus: checkPrometheusOptions(options.prometheus),
    store: store ?? new MemorySessionStore(),
    ownsStore: store === undefined,
    session: resolveSession(options.session),
    storeTimeout,
    copies,
    hedgeDelay,
    maxExtraLoad,
    timeout,
    accept: options.accept ?? defaultAccept,
    select: resolveSelect(options.select, copies),
    isUpdate: options.isUpdate ?? defaultIsUpdate,
    secret,
    trustForwarded: resolveBoolean('trustForwarded', options.trustForwarded, false),
    maxBodySize,
    bodyTimeout,
    bodyIdleTimeout,
    maxBufferedBytes,
    connections,
    maxInFlight,
    now: options.now ?? (() => performance.now()),
  };
}

function resolveSelect(select: ProxyOptions['select'], copies: number): ResolvedSelect {
  if (select === undefined || select === 'first') return { kind: 'first' };
  if (typeof select === 'function') return { kind: 'custom', choose: select };
  if (typeof select !== 'object' || select === null) throw new InvalidOptionError('select', "must be 'first', { quorum: k } or a function", select);
  for (const key of Object.keys(select)) {
    if (key !== 'quorum') throw new InvalidOptionError(`select.${key}`, 'is not an option (known: quorum)', (select as Record<string, unknown>)[key]);
  }
  const { quorum } = select;
  if (!Number.isInteger(quorum) || quorum < 1 || quorum > copies) {
    throw new InvalidOptionError('select.quorum', `must be an integer from 1 to copies (${copies})`, quorum);
  }
  // One answer agreeing with itself: the first acceptable one, streamed.
  return quorum === 1 ? { kind: 'first' } : { kind: 'quorum', quorum };
}

function resolveEjection(ejection: ProxyOptions['ejection']): ResolvedOptions['ejection'] {
  if (ejection === false) return false;
  const o = ejection ?? {};
  const known = ['consecutiveFailures', 'baseEjectionTime', 'maxEjectionTime', 'maxEjectedPercent'];
  if (typeof o !== 'object' || o === null) throw new InvalidOptionError('ejection', `must be { ${known.join(', ')} } or false`, ejection);
  for (const key of Object.keys(o)) {
    if (!known.includes(key)) throw new InvalidOptionError(`ejection.${key}`, `is not an option (known: ${known.join(', ')})`, (o as Record<string, unknown>)[key]);
  }
  const consecutiveFailures = o.consecutiveFailures ?? 5;
  if (!Number.isInteger(consecutiveFailures) || consecutiveFailures < 1) throw new InvalidOptionError('ejection.consecutiveFailures', 'must be an integer >= 1', o.consecutiveFailures);
  const baseEjectionTime = o.baseEjectionTime ?? 30_000;
  if (!Number.isFinite(baseEjectionTime) || baseEjectionTime <= 0) throw new InvalidOptionError('ejection.baseEjectionTime', 'must be a number of milliseconds > 0', o.baseEjectionTime);
  const maxEjectionTime = o.maxEjectionTime ?? Math.max(300_000, baseEjectionTime);
  if (!Number.isFinite(maxEjectionTime) || maxEjectionTime < baseEjectionTime) {
    throw new InvalidOptionError('ejection.maxEjectionTime', 'must be a number of milliseconds >= baseEjectionTime', o.maxEjectionTime);
  }
  const maxEjectedPercent = o.maxEjectedPercent ?? 50;
  if (typeof maxEjectedPercent !== 'number' || !(maxEjectedPercent >= 0 && maxEjectedPercent <= 100)) {
    throw new InvalidOptionError('ejection.maxEjectedPercent', 'must be a number from 0 to 100', o.maxEjectedPercent);
  }
  return { consecutiveFailures, baseEjectionTime, maxEjectionTime, maxEjectedPercent };
}

function resolveIdempotency(idem: ProxyOptions['idempotency']): ResolvedOptions['idempotency'] {
  if (idem === false) return false;
  const o = idem ?? {};
  if (typeof o !== 'object' || o === null) throw new InvalidOptionError('idempotency', 'must be { scope?, ttl?, maxAnswerSize?, wait? } or false', idem);
  for (const key of Object.keys(o)) {
    if (key !== 'scope' && key !== 'ttl' && key !== 'maxAnswerSize' && key !== 'wait') throw new InvalidOptionError(`idempotency.${key}`, 'is not an option (known: scope, ttl, maxAnswerSize, wait)', (o as Record<string, unknown>)[key]);
  }
  if (o.scope !== undefined && typeof o.scope !== 'function') throw new InvalidOptionError('idempotency.scope', 'must be a function', o.scope);
  const ttl = o.ttl ?? 86_400_000;
  if (!Number.isFinite(ttl) || ttl <= 0) throw new InvalidOptionError('idempotency.ttl', 'must be a number of milliseconds > 0', o.ttl);
  const maxAnswerSize = o.maxAnswerSize ?? 1024 * 1024;
  if (!Number.isInteger(maxAnswerSize) || maxAnswerSize < 0) throw new InvalidOptionError('idempotency.maxAnswerSize', 'must be an integer number of bytes >= 0', o.maxAnswerSize);
  const wait = o.wait ?? 1000;
  if (typeof wait !== 'number' || !Number.isFinite(wait) || wait < 0) throw new InvalidOptionError('idempotency.wait', 'must be a number of milliseconds >= 0', o.wait);
  return { scope: o.scope, ttl, maxAnswerSize, wait };
}

const SESSION_KEYS = ['cookie', 'header', 'secure', 'sameSite', 'domain', 'path', 'maxAge'];

function resolveSession(session: ProxyOptions['session']): ResolvedOptions['session'] {
  if (session === false) return false;
  const base = { secure: 'auto' as const, sameSite: 'Lax' as const, domain: undefined, path: '/', maxAge: undefined };
  if (session === undefined) return { cookie: 'rp_session', header: undefined, ...base };
  if (typeof session !== 'object' || session === null) throw new InvalidOptionError('session', `must be { ${SESSION_KEYS.join('?, ')}? } or false`, session);
  for (const key of Object.keys(session)) {
    if (!SESSION_KEYS.includes(key)) throw new InvalidOptionError(`session.${key}`, `is not an option (known: ${SESSION_KEYS.join(', ')})`, (session as Record<string, unknown>)[key]);
  }
  const { cookie, header, secure = 'auto', sameSite = 'Lax', domain, path = '/', maxAge } = session;
  if (secure !== 'auto' && typeof secure !== 'boolean') throw new InvalidOptionError('session.secure', "must be true, false or 'auto'", secure);
  if (sameSite !== 'Strict' && sameSite !== 'Lax' && sameSite !== 'None') throw new InvalidOptionError('session.sameSite', "must be 'Strict', 'Lax' or 'None'", sameSite);
  if (sameSite === 'None' && secure !== true) throw new InvalidOptionError('session.sameSite', "'None' needs secure: true (browsers refuse it otherwise)", sameSite);
  if (domain !== undefined && (typeof domain !== 'string' || !/^\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$/.test(domain))) throw new InvalidOptionError('session.domain', 'must be a domain name', domain);
  if (typeof path !== 'string' || !/^\/[\x21-\x3a\x3c-\x7e]*$/.test(path)) throw new InvalidOptionError('session.path', 'must be a path starting with / (no ; or spaces)', path);
  if (maxAge !== undefined && (!Number.isSafeInteger(maxAge) || maxAge < 0)) throw new InvalidOptionError('session.maxAge', 'must be a whole number of seconds >= 0', maxAge);
  const attributes = { secure, sameSite, domain, path, maxAge };
  if (cookie !== undefined && (typeof cookie !== 'string' || !TOKEN.test(cookie))) throw new InvalidOptionError('session.cookie', 'must be a cookie name', cookie);
  if (header !== undefined && (typeof header !== 'string' || !TOKEN.test(header) || header.toLowerCase().startsWith('x-redundant-'))) {
    throw new InvalidOptionError('session.header', 'must be a header name outside x-redundant-*', header);
  }
  if (cookie === undefined && header === undefined) return { cookie: 'rp_session', header: undefined, ...attributes };
  return { cookie, header: header?.toLowerCase(), ...attributes };
}

function resolveBoolean(name: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw new InvalidOptionError(name, 'must be true or false', value);
  return value;
}

function resolveUpstreams(list: ProxyOptions['upstreams']): Upstream[] {
  if (!Array.isArray(list) || list.length === 0) throw new InvalidOptionError('upstreams', 'must be a non-empty array of URLs or { id, url }', list);
  const seen = new Set<string>();
  return list.map((entry, i) => {
    const name = `upstreams[${i}]`;
    let url: string;
    let id: string | undefined;
    if (typeof entry === 'string') url = entry;
    else if (typeof entry === 'object' && entry !== null && typeof entry.url === 'string') {
      url = entry.url;
      id = entry.id;
      if (typeof id !== 'string' || !ID.test(id)) throw new InvalidOptionError(`${name}.id`, 'must be 1-64 characters of letters, digits and ._:-', id);
    } else throw new InvalidOptionError(name, 'must be a URL string or { id, url }', entry);
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new InvalidOptionError(name, 'must be an absolute http(s) URL', url);
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new InvalidOptionError(name, 'must be an http: or https: URL', url);
    if (parsed.search || parsed.hash || parsed.username || parsed.password) throw new InvalidOptionError(name, 'must not carry a query, fragment or credentials', url);
    const explicit = id !== undefined;
    id ??= parsed.host;
    if (seen.has(id)) throw new InvalidOptionError(name, `repeats the upstream id "${id}"`, url);
    seen.add(id);
    return { id, label: explicit ? id : `upstream-${i + 1}`, origin: parsed.origin, prefix: parsed.pathname.replace(/\/+$/, '') };
  });
}
