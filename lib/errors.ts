import { COMMIT, H } from './wire/protocol.js';

// Every error this library throws or answers with carries a stable `code`.
// `instanceof` fails across realms (jest's VM contexts) and across two copies
// of the package in one node_modules tree, so errors are recognised by a brand.
const kBrand = Symbol.for('redundant-proxy.error');

/** Stable error codes. The client-facing ones also appear in JSON error bodies. */
export const codes = {
  /** An option passed to a factory is missing or malformed. */
  INVALID_OPTION: 'RP_ERR_INVALID_OPTION',
  /** The request body exceeds `maxBodySize` (413). */
  BODY_TOO_LARGE: 'RP_ERR_BODY_TOO_LARGE',
  /** A body parser consumed the request stream and left no raw body (500). */
  BODY_CONSUMED: 'RP_ERR_BODY_CONSUMED',
  /** The client sent its request body too slowly: nothing for `bodyIdleTimeout`, or not all of it within `bodyTimeout` (408). */
  BODY_TIMEOUT: 'RP_ERR_BODY_TIMEOUT',
  /** The gateway is buffering as many request-body bytes as `maxBufferedBytes` allows: this request was not read (503). */
  OVERLOADED: 'RP_ERR_OVERLOADED',
  /** The client's request body could not be read (400). */
  BODY_READ: 'RP_ERR_BODY_READ',
  /** The request target is neither a path nor an absolute URL (`OPTIONS *`): no upstream is asked (400). */
  BAD_TARGET: 'RP_ERR_BAD_TARGET',
  /**
   * The request's body comes in a transfer coding other than `chunked`
   * (`Transfer-Encoding: gzip, chunked`), which the proxy does not decode and
   * will not pass off as plain bytes: no upstream is asked (501).
   */
  TRANSFER_CODING: 'RP_ERR_TRANSFER_CODING',
  /** No copy produced an acceptable response and none produced any response (502). */
  UPSTREAMS_FAILED: 'RP_ERR_UPSTREAMS_FAILED',
  /** A copy's connection to an upstream set to `http2: true` was refused: the upstream chose HTTP/1.1 in the TLS handshake (the copy fails). */
  UPSTREAM_NOT_H2: 'RP_ERR_UPSTREAM_NOT_H2',
  /** `select: { quorum: k }`: the acceptable answers disagreed and no `k` of them can agree any more (502). */
  NO_QUORUM: 'RP_ERR_NO_QUORUM',
  /** A `select` function chose none of the answers, threw, or returned something it was not given (502). */
  NO_SELECTION: 'RP_ERR_NO_SELECTION',
  /** No acceptable response within `timeout` (504). */
  TIMEOUT: 'RP_ERR_TIMEOUT',
  /** Every upstream usable for this request has `maxInFlight` copies in flight already (the circuit breaker): answered at once, not queued (503). */
  UPSTREAM_BUSY: 'RP_ERR_UPSTREAM_BUSY',
  /** Every upstream is ejected or none is usable for this request (503). */
  NO_UPSTREAM: 'RP_ERR_NO_UPSTREAM',
  /** A copy's signed headers are missing, malformed, forged or tampered with (401). */
  BAD_SIGNATURE: 'RP_ERR_BAD_SIGNATURE',
  /** A signed copy's timestamp lies outside the accepted clock skew: a late replay (401). */
  STALE_COPY: 'RP_ERR_STALE_COPY',
  /** A signed copy already received once: a replay (401). */
  REPLAYED_COPY: 'RP_ERR_REPLAYED_COPY',
  /** A signed copy addressed to another upstream than this worker (401). */
  WRONG_UPSTREAM: 'RP_ERR_WRONG_UPSTREAM',
  /** Another copy of the same request committed first (409). */
  SUPERSEDED: 'RP_ERR_SUPERSEDED',
  /** An update was committed by an upstream, but its answer was lost on the way (502). Do not retry it blindly. */
  ANSWER_LOST: 'RP_ERR_ANSWER_LOST',
  /**
   * A copy that took the commit over found the earlier holder's commit already
   * in the database (`AlreadyAppliedError`): the update is applied, its answer
   * was lost. The worker answers it with `x-redundant-commit: applied`; the
   * client gets `RP_ERR_ANSWER_LOST`.
   */
  ALREADY_APPLIED: 'RP_ERR_ALREADY_APPLIED',
  /**
   * An update with an `Idempotency-Key` ended without a known outcome (a copy
   * held the commit and vanished, or the client left while one did): it may
   * or may not be applied. Retry with the same key to learn which (503).
   */
  OUTCOME_UNKNOWN: 'RP_ERR_OUTCOME_UNKNOWN',
  /**
   * A retry with an `Idempotency-Key` whose earlier attempt ended without
   * applying the update and sealed its request (its answer, which committed
   * nothing, could not be kept for replay): it was not applied and can no
   * longer be under this key. Send it again with a new key (409).
   */
  NOT_APPLIED: 'RP_ERR_NOT_APPLIED',
  /** The session store is at its bound of idempotency keys or bytes and takes no new key until some expire (503). */
  STORE_FULL: 'RP_ERR_STORE_FULL',
  /** A request with the same Idempotency-Key is still being processed (409). */
  IDEMPOTENCY_IN_FLIGHT: 'RP_ERR_IDEMPOTENCY_IN_FLIGHT',
  /** The Idempotency-Key was already used for a different request (422). */
  IDEMPOTENCY_MISMATCH: 'RP_ERR_IDEMPOTENCY_MISMATCH',
  /** The Idempotency-Key header is malformed (400). */
  BAD_IDEMPOTENCY_KEY: 'RP_ERR_BAD_IDEMPOTENCY_KEY',
  /** The session store failed or did not answer in time. */
  STORE_UNAVAILABLE: 'RP_ERR_STORE_UNAVAILABLE',
  /**
   * A hook of the gateway's (`isUpdate`, `rewriteCopy`, `rewriteAnswer`) threw, rejected,
   * or gave back what cannot be sent (an `x-redundant-*` header, a bad path,
   * status or header value): the request is answered `500` and the hook's
   * error goes to the proxy's `error` event (source `hook`).
   */
  HOOK_FAILED: 'RP_ERR_HOOK_FAILED',
  /**
   * A WebSocket upgrade reached the proxy as a plain request: the server
   * does not hand its upgrades to the proxy (`proxy.attach(server)`), so it
   * cannot be passed through (501) rather than sent on as a plain GET.
   */
  UPGRADE_NOT_ATTACHED: 'RP_ERR_UPGRADE_NOT_ATTACHED',
  /**
   * An upgrade outside the `mountPath` given to `proxy.attach()`, on a
   * server with no other `upgrade` listener to take it (404).
   */
  NOT_MOUNTED: 'RP_ERR_NOT_MOUNTED',
  /** The proxy or store was closed. */
  CLOSED: 'RP_ERR_CLOSED',
  /** Unexpected failure inside the proxy (500). */
  INTERNAL: 'RP_ERR_INTERNAL',
} as const;

export type ErrorCode = (typeof codes)[keyof typeof codes];

export interface RedundantProxyErrorOptions {
  cause?: unknown;
  /** HTTP status this error maps to when it reaches a client. */
  status?: number;
}

/** Base class of every error of this library. */
export class RedundantProxyError extends Error {
  readonly code: ErrorCode;
  readonly status: number;

  constructor(code: ErrorCode, message: string, options: RedundantProxyErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'RedundantProxyError';
    this.code = code;
    this.status = options.status ?? 500;
    brand(this);
  }

  /** The JSON body sent to a client for this error. */
  toJSON(): { code: ErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}

/**
 * Thrown at construction when an option is missing or malformed. It is a
 * `TypeError`, as lru-cache and Node itself throw for bad arguments, and it
 * carries the brand and `code` of the library's errors.
 */
export class InvalidOptionError extends TypeError {
  readonly code = codes.INVALID_OPTION;
  /** The dotted name of the offending option, e.g. `hedge.delay`. */
  readonly option: string;

  constructor(option: string, expected: string, got: unknown) {
    super(`redundant-proxy: option \`${option}\` ${expected}; got ${describe(got)}`);
    this.name = 'InvalidOptionError';
    this.option = option;
    brand(this);
  }
}

/**
 * The copy lost the commit arbitration: another copy of the same request
 * committed. Roll back and rethrow; the worker answers `409` with
 * `x-redundant-commit: lost`, an answer the proxy never adopts.
 */
export class SupersededError extends RedundantProxyError {
  /** Applied by Express's final handler, so the proxy sees the loss whichever handler answers. */
  readonly headers = { [H.commit]: COMMIT.lost };
  /**
   * When a store refuses a claim or a confirm and knows why: the duplicate id
   * of the copy that committed, or `null` when no copy has committed (the
   * claim was taken over, or is free again). `undefined` when not known.
   */
  readonly committedBy: string | null | undefined;

  constructor(message = 'another copy of this request committed first', options: RedundantProxyErrorOptions & { committedBy?: string | null } = {}) {
    const { committedBy, ...rest } = options;
    super(codes.SUPERSEDED, message, { status: 409, ...rest });
    this.name = 'SupersededError';
    this.committedBy = committedBy;
  }
}

/**
 * Thrown by an update handler, inside `commitOnce`'s function (or after
 * `claim()`), when it finds that this request's commit is already in the
 * database: the unique row for the request id exists. That happens when an
 * earlier copy committed and then died (or lost its lease) before it could
 * confirm, and this copy took the claim over. The worker records the request
 * as committed and answers `x-redundant-commit: applied`; the proxy tells the
 * client the update was applied (`RP_ERR_ANSWER_LOST`) and stops every other
 * copy. Roll back and rethrow it, as a `SupersededError`.
 *
 * @example
 * await h.commitOnce(async () => {
 *   const r = await db.query('INSERT INTO ledger (request_id, …) VALUES ($1, …) ON CONFLICT DO NOTHING', [h.requestId, …]);
 *   if (r.rowCount === 0) throw new AlreadyAppliedError();
 *   await db.query('COMMIT');
 * });
 */
export class AlreadyAppliedError extends RedundantProxyError {
  readonly headers = { [H.commit]: COMMIT.applied };

  constructor(message = 'this request was already applied by an earlier copy; its answer was lost', options: RedundantProxyErrorOptions = {}) {
    super(codes.ALREADY_APPLIED, message, { status: 409, ...options });
    this.name = 'AlreadyAppliedError';
  }
}

/** True for an `AlreadyAppliedError`, across realms and package copies. */
export function isAlreadyAppliedError(value: unknown): value is AlreadyAppliedError {
  return isRedundantProxyError(value) && value.code === codes.ALREADY_APPLIED;
}

/** True for any error thrown by this library, across realms and package copies. */
export function isRedundantProxyError(value: unknown): value is RedundantProxyError | InvalidOptionError {
  return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[kBrand] === true;
}

/** True for a `SupersededError`, across realms and package copies. */
export function isSupersededError(value: unknown): value is SupersededError {
  return isRedundantProxyError(value) && value.code === codes.SUPERSEDED;
}

function brand(err: object): void {
  Object.defineProperty(err, kBrand, { value: true, enumerable: false });
}

const kRedacted = Symbol('redundant-proxy.redacted');

/**
 * A value an option error must not show (a secret): only its kind and
 * length are described.
 */
export function redacted(value: unknown): unknown {
  const kind = typeof value === 'string' ? `a string of ${value.length} characters` : Buffer.isBuffer(value) ? `a Buffer of ${value.length} bytes` : value === null ? 'null' : typeof value;
  return { [kRedacted]: `${kind} (not shown)` };
}

function describe(value: unknown): string {
  if (typeof value === 'object' && value !== null && kRedacted in value) return (value as Record<symbol, string>)[kRedacted]!;
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'function') return 'a function';
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (value === null) return 'null';
  if (typeof value === 'object') return 'an object';
  return String(value);
}
