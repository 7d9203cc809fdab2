import { createHmac, randomFillSync, timingSafeEqual } from 'node:crypto';

// The wire protocol between the proxy and the workers. Every header is
// `x-redundant-*`; the proxy strips any a client sends, so a worker can trust
// them when they are signed (and only then, when a secret is shared).

/** Request headers: what the proxy sets on each copy (signed, with a secret). */
export const REQUEST_HEADERS = {
  requestId: 'x-redundant-request-id',
  duplicateId: 'x-redundant-duplicate-id',
  upstream: 'x-redundant-upstream',
  /** `<index>/<of>`: this copy's place among the copies planned. */
  copy: 'x-redundant-copy',
  /** `1` for an update, `0` for a read. */
  update: 'x-redundant-update',
  session: 'x-redundant-session',
  /** `1` when the proxy minted the session id for this request (nothing to load). */
  sessionNew: 'x-redundant-session-new',
  timestamp: 'x-redundant-timestamp',
  signature: 'x-redundant-signature',
  /**
   * With a secret: SHA-256 of the copy's body, base64url (of the empty body
   * when it has none). Signed, so that the worker knows which body to check
   * the bytes it receives against.
   */
  bodyHash: 'x-redundant-body-sha256',
  /**
   * The update's `Idempotency-Key`, as the proxy scoped and hashed it (never
   * the client's raw key). The same for every attempt of the key, so an
   * application can keep it in a unique column: a store that forgot the key
   * (restarted empty) cannot make a retry apply twice.
   */
  idempotency: 'x-redundant-idempotency',
} as const;

/** Answer headers: what the worker says on its answer to a copy, and the proxy to its client. */
export const ANSWER_HEADERS = {
  /** `1`, set by every worker, so the proxy learns which upstreams run it. */
  worker: 'x-redundant-worker',
  /** The copy's commit outcome, one of {@link COMMIT}: `won` (with `x-redundant-fence`), `applied` or `lost`. */
  commit: 'x-redundant-commit',
  /** The fencing token of the copy's commit (`won` or `applied`). */
  fence: 'x-redundant-fence',
  /**
   * `1` when the copy saved a session candidate: the proxy records the
   * adoption before answering. `0` when it saved none (nothing to promote).
   * Absent when the head left before the handler ended (a streamed answer).
   */
  sessionChanged: 'x-redundant-session-changed',
  /**
   * The worker refused the copy before its handler ran, with this code
   * (`RP_ERR_BAD_SIGNATURE`, …): the proxy counts it as that upstream's
   * failure, never as an answer.
   */
  refused: 'x-redundant-refused',
  /**
   * `1` on a worker's `503` `RP_ERR_STORE_UNAVAILABLE`: its session store
   * failed, not its application. The proxy's outlier ejection does not count
   * it against the upstream unless another copy of the same request got an
   * answer through (then this upstream's store is the one failing).
   */
  storeUnavailable: 'x-redundant-store-unavailable',
  /** To the client: the label of the upstream whose answer was adopted. */
  servedBy: 'x-redundant-served-by',
} as const;

/** Headers between the client and the gateway that the proxy reads or sets (not `x-redundant-*`: clients see them). */
export const CLIENT_HEADERS = {
  /** Answer: the request id the proxy minted (a client's own is never trusted). */
  requestId: 'x-request-id',
  /** Request: the client's `Idempotency-Key` (IETF httpapi draft). */
  idempotencyKey: 'idempotency-key',
  /** Answer: `true` on an answer replayed for an `Idempotency-Key`. */
  replayed: 'idempotent-replayed',
} as const;

/** Every header of the protocol, both directions. */
export const H = { ...REQUEST_HEADERS, ...ANSWER_HEADERS } as const;

/** The states of `x-redundant-commit`. */
export const COMMIT = {
  /** This copy committed the update: adopt its answer, stop every other copy. */
  won: 'won',
  /** This copy found the update already in the database (an earlier copy committed and vanished): applied, its answer lost. */
  applied: 'applied',
  /** Another copy committed first: this answer is never adopted. */
  lost: 'lost',
} as const;

/** A state of `x-redundant-commit`. */
export type CommitState = (typeof COMMIT)[keyof typeof COMMIT];

/** The value of a flag header (`x-redundant-worker`, `-update`, `-session-new`, `-session-changed`) when set. */
export const FLAG_ON = '1';
/** The value of `x-redundant-update` for a read. */
export const FLAG_OFF = '0';

/** Reads a commit state from an answer's header; anything else is no state. */
export function commitState(value: string | string[] | undefined): CommitState | undefined {
  return value === COMMIT.won || value === COMMIT.lost || value === COMMIT.applied ? value : undefined;
}

export const PREFIX = 'x-redundant-';

/**
 * The duplicate id under which the proxy seals a request: it claims and
 * confirms the commit itself, so that no copy can commit any more, before it
 * adopts an answer that did not commit while copies are still out (at the
 * timeout). A copy refused by a seal lost to nobody's commit.
 */
export function sealId(requestId: string): string {
  return `${requestId}.seal`;
}

/** What a session id may look like; anything else from a client is ignored and a new one minted. */
export const SESSION_ID = /^[A-Za-z0-9_-]{16,128}$/;

/** What a copy's headers say, once parsed (and verified, when signed). */
export interface CopyClaims {
  requestId: string;
  duplicateId: string;
  upstreamId: string;
  /** 1-based index of this copy, and how many copies the race planned. */
  index: number;
  of: number;
  update: boolean;
  /** The client's session id, or '' when the request has none. */
  sessionId: string;
  /** True when the proxy minted the session id: the session has no state yet. */
  sessionNew: boolean;
  /** Milliseconds since the epoch when the proxy sent the copy. */
  timestamp: number;
  /** The update's scoped, hashed `Idempotency-Key`, when it has one. */
  idempotencyKey?: string;
  /**
   * The copy's method, as sent. Signed, never sent as a header: the worker
   * takes it from the request it received.
   */
  method?: string;
  /**
   * The copy's request target (origin-form, the upstream's path prefix
   * included), as sent. Signed, never sent as a header: the worker takes it
   * from the request it received.
   */
  target?: string;
  /** SHA-256 of the copy's body, base64url (that of the empty body when it has none); with a secret only. */
  bodyHash?: string;
}

/** What a worker knows of the request a copy came in, to check the signature against. */
export interface ReceivedRequest {
  method: string;
  /** The request target as received (before any sub-app rewrote it). */
  target: string;
}

function canonical(c: CopyClaims): string {
  // Newline-separated: none of the fields may contain a newline (ids are
  // minted by the proxy; the session id is validated before it is signed; an
  // HTTP method or request target cannot hold one, and the parser refuses a
  // request line that does). v2 binds the copy to its request: method,
  // target and body, so that a captured copy cannot carry another request.
  return [
    'v2',
    c.requestId,
    c.duplicateId,
    c.upstreamId,
    `${c.index}/${c.of}`,
    c.update ? '1' : '0',
    c.sessionId,
    c.sessionNew ? '1' : '0',
    String(c.timestamp),
    c.idempotencyKey ?? '',
    c.method ?? '',
    c.target ?? '',
    c.bodyHash ?? '',
  ].join('\n');
}

export function sign(claims: CopyClaims, secret: string | Buffer): string {
  return createHmac('sha256', secret).update(canonical(claims)).digest('base64url');
}

/** Appends the copy headers to a flat `[name, value, …]` header list. */
export function appendCopyHeaders(out: string[], claims: CopyClaims, secret: string | Buffer | undefined): void {
  out.push(
    H.requestId,
    claims.requestId,
    H.duplicateId,
    claims.duplicateId,
    H.upstream,
    claims.upstreamId,
    H.copy,
    `${claims.index}/${claims.of}`,
    H.update,
    claims.update ? FLAG_ON : FLAG_OFF,
  );
  if (claims.sessionId) out.push(H.session, claims.sessionId);
  if (claims.sessionNew) out.push(H.sessionNew, FLAG_ON);
  if (claims.idempotencyKey) out.push(H.idempotency, claims.idempotencyKey);
  if (claims.bodyHash !== undefined) out.push(H.bodyHash, claims.bodyHash);
  out.push(H.timestamp, String(claims.timestamp));
  if (secret !== undefined) out.push(H.signature, sign(claims, secret));
}

// Session ids are minted for every request that comes without one, so their
// entropy is drawn from the CSPRNG in batches (as crypto.randomUUID() does)
// rather than with one randomBytes() call each. Every byte is used once.
// (A process started from a V8 startup snapshot built after ids were minted
// would reuse the rest of the batch: the library mints none at import time.)
const SESSION_ID_BYTES = 18;
const entropy = Buffer.allocUnsafeSlow(SESSION_ID_BYTES * 256);
let entropyOffset = entropy.length;

/** A new session id: 18 random bytes (144 bits), base64url (24 characters). */
export function mintSessionId(): string {
  if (entropyOffset + SESSION_ID_BYTES > entropy.length) {
    randomFillSync(entropy);
    entropyOffset = 0;
  }
  const id = entropy.toString('base64url', entropyOffset, entropyOffset + SESSION_ID_BYTES);
  entropyOffset += SESSION_ID_BYTES;
  return id;
}

type HeaderBag = Record<string, string | string[] | undefined>;

function one(headers: HeaderBag, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** Why a copy's headers were refused. */
export type ReadCopyResult =
  | { ok: true; claims: CopyClaims }
  | { ok: false; reason: 'absent' | 'malformed' | 'unsigned' | 'bad-signature' | 'stale' };

/**
 * Parses a copy's headers. With a `secret`, also checks the signature and that
 * the timestamp lies within `maxSkewMs` of `now`, so a captured copy cannot be
 * replayed later or into another request. The signature covers the method
 * and target of `received`, the request the copy came in: a copy replayed
 * with another method or target fails it. It covers the body hash too, but
 * the body itself can only be checked as it streams in (the worker does).
 */
export function readCopyHeaders(headers: HeaderBag, received: ReceivedRequest, secret: string | Buffer | undefined, now: number, maxSkewMs: number): ReadCopyResult {
  const requestId = one(headers, H.requestId);
  if (requestId === undefined) {
    // A signature without a request id is a tampered copy, not a direct request.
    return secret !== undefined && one(headers, H.signature) !== undefined ? { ok: false, reason: 'malformed' } : { ok: false, reason: 'absent' };
  }
  const duplicateId = one(headers, H.duplicateId);
  const upstreamId = one(headers, H.upstream);
  const copy = /^(\d{1,4})\/(\d{1,4})$/.exec(one(headers, H.copy) ?? '');
  const update = one(headers, H.update);
  const ts = one(headers, H.timestamp);
  const session = one(headers, H.session);
  const idempotencyKey = one(headers, H.idempotency);
  if (idempotencyKey !== undefined && !/^[A-Za-z0-9_-]{1,128}$/.test(idempotencyKey)) return { ok: false, reason: 'malformed' };
  const bodyHash = one(headers, H.bodyHash);
  if (bodyHash !== undefined && !/^[A-Za-z0-9_-]{43}$/.test(bodyHash)) return { ok: false, reason: 'malformed' };
  if (!requestId || !duplicateId || !upstreamId || !copy || (update !== FLAG_OFF && update !== FLAG_ON) || !ts || !/^\d{1,16}$/.test(ts) || (session !== undefined && !SESSION_ID.test(session))) {
    return { ok: false, reason: 'malformed' };
  }
  const claims: CopyClaims = {
    requestId,
    duplicateId,
    upstreamId,
    index: Number(copy[1]),
    of: Number(copy[2]),
    update: update === FLAG_ON,
    sessionId: session ?? '',
    sessionNew: one(headers, H.sessionNew) === FLAG_ON,
    timestamp: Number(ts),
    method: received.method,
    target: received.target,
  };
  if (idempotencyKey !== undefined) claims.idempotencyKey = idempotencyKey;
  if (secret === undefined) return { ok: true, claims };
  const signature = one(headers, H.signature);
  if (!signature) return { ok: false, reason: 'unsigned' };
  // A signed copy always says which body it carries: without it, the body could not be checked.
  if (bodyHash === undefined) return { ok: false, reason: 'malformed' };
  claims.bodyHash = bodyHash;
  const expected = Buffer.from(sign(claims, secret));
  const got = Buffer.from(signature);
  if (got.length !== expected.length || !timingSafeEqual(got, expected)) return { ok: false, reason: 'bad-signature' };
  if (Math.abs(now - claims.timestamp) > maxSkewMs) return { ok: false, reason: 'stale' };
  return { ok: true, claims };
}
