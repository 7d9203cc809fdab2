import type { IncomingMessage } from 'node:http';

// The parts of redundantProxy()'s options (options.ts), each documented with its default.

/** An application server the proxy sends copies to. */
export interface UpstreamSpec {
  /** Short, stable name used in headers, events and metrics. Letters, digits and `._:-` only. */
  id: string;
  /** `http://` or `https://` origin, optionally with a path prefix prepended to every request path. */
  url: string;
  /**
   * TLS settings for this `https:` upstream, taken field by field over the
   * proxy's `tls` (a field given here wins). Refused on an `http:` upstream.
   * @example { servername: 'b.internal', ca: readFileSync('ca.pem') }
   */
  tls?: UpstreamTlsOptions;
  /**
   * Speak HTTP/2 to this `https:` upstream; overrides the proxy's `http2`.
   * Refused on an `http:` upstream (see the proxy's `http2`).
   * @default the proxy's `http2`
   */
  http2?: boolean;
}

/**
 * How the proxy's connections to `https:` upstreams are secured; passed to
 * `tls.connect()` through undici's `connect` options. PEM strings or Buffers
 * (an array for several). Checked at construction: a CA that holds no
 * certificate, a `cert` without its `key`, a `key` that does not match its
 * `cert` are refused; errors never show their content.
 */
export interface UpstreamTlsOptions {
  /**
   * The certificate authorities that the upstreams' certificates must chain
   * to, instead of Node's built-in list.
   * @default Node's built-in CA list
   */
  ca?: string | Buffer | ReadonlyArray<string | Buffer>;
  /** The client certificate (chain) shown to upstreams that ask for one (mutual TLS). Needs `key`. */
  cert?: string | Buffer | ReadonlyArray<string | Buffer>;
  /** The client certificate's private key, unencrypted PEM. Needs `cert`. */
  key?: string | Buffer | ReadonlyArray<string | Buffer>;
  /**
   * Refuse an upstream whose certificate does not chain to a trusted CA or
   * does not name the host. `false` only for tests: anyone on the path can
   * then pose as the upstream.
   * @default true
   */
  rejectUnauthorized?: boolean;
  /**
   * The host name sent in SNI and that the upstream's certificate must name,
   * when it is not the URL's host (an IP address, say).
   * @default the URL's host name (none for an IP address)
   */
  servername?: string;
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

/** Retrying a copy whose connection failed before its request was sent. */
export interface RetryOptions {
  /** Retries per copy (besides its first try). @default 2 */
  attempts?: number;
  /** Milliseconds before the first retry; each further one waits twice as long. @default 25 */
  backoff?: number;
  /** Longest wait before a retry, in ms. @default 1000 */
  maxBackoff?: number;
}

/** Active health checks of every upstream. */
export interface HealthCheckOptions {
  /** Path (and query) asked with GET, after the upstream URL's own path. @default '/' */
  path?: string;
  /** Milliseconds between the end of one probe of an upstream and the start of the next. @default 5000 */
  interval?: number;
  /** A probe without an answer within this many ms failed. @default 2000 */
  timeout?: number;
  /** Failed probes in a row that make an upstream unhealthy. @default 3 */
  unhealthyThreshold?: number;
  /** Passed probes in a row that make an unhealthy upstream healthy again. @default 2 */
  healthyThreshold?: number;
  /** Which statuses pass. @default 200–399 */
  expect?: (status: number) => boolean;
}

export interface IdempotencyOptions {
  /**
   * A stable identity a key belongs to (a tenant, an account): keys live in
   * each scope's namespace, and the scope must not change between a client's
   * attempts. Return undefined to skip idempotency for this request.
   * @default none: one namespace, and who sent the key (its session id; else
   * its Authorization header, hashed; else anonymous) must match its first
   * use, or the request is refused with 422 (never run again, never answered
   * with another client's answer)
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

/** Which copy a hook is shown. */
export interface CopyInfo {
  /** The copy's place among the request's copies, from 1. */
  index: number;
  /** How many copies the request planned. */
  of: number;
  /** The copy's own id (`x-redundant-duplicate-id`). */
  duplicateId: string;
  /** The id of the upstream it goes to (or came from). */
  upstream: string;
  /** It left after a hedge delay, not at once. */
  hedged: boolean;
}

/**
 * One copy on its way out, as `rewriteCopy` is shown it. `path` and
 * `headers` may be changed; the method and the body may not: the body was
 * read once and is shared by every copy, and with a `secret` each copy's
 * signature covers its method and its body's hash.
 */
export interface OutgoingCopy {
  /** The request id the proxy minted (`x-request-id`). */
  readonly requestId: string;
  readonly copy: Readonly<CopyInfo>;
  /** The client's request, as it reached the gateway (read it; its body is already read). */
  readonly req: IncomingMessage;
  readonly method: string;
  /**
   * The request target this copy asks its upstream, in origin-form
   * (`/path?query`), the upstream's path prefix included. It is what gets
   * signed, so a changed path still passes the worker's signature check.
   */
  path: string;
  /**
   * The copy's headers, names lowercased (a repeated header as an array):
   * the client's end-to-end headers, X-Forwarded-* and `x-request-id`. The
   * protocol's `x-redundant-*` headers are added after the hook, signed; the
   * hook may not set any, nor the body's framing (`content-length`,
   * `transfer-encoding`) or hop-by-hop headers.
   */
  headers: Record<string, string | string[]>;
}

/**
 * The adopted answer's head, as `rewriteAnswer` is shown it before it goes
 * to the client. `status` and `headers` may be changed; the body streams on
 * as the upstream sends it.
 */
export interface AdoptedAnswer {
  readonly requestId: string;
  /** The copy whose answer was adopted. */
  readonly copy: Readonly<CopyInfo>;
  readonly req: IncomingMessage;
  /** The status the client gets: a final one, 200 to 599. */
  status: number;
  /**
   * The headers the client gets, names lowercased: the upstream's, less
   * hop-by-hop and `x-redundant-*` ones, with the session cookie the proxy
   * adds. `x-request-id` and `x-redundant-served-by` are set after the hook.
   */
  headers: Record<string, string | string[]>;
}
