// The session management server of the method, as an interface. Records are
// plain JSON data (they round-trip through JSON.stringify unchanged), so a
// store may keep them in memory, in Redis or anywhere else.

/** Step "receive and record" (docs/design.md): an application server received one copy of a request. */
export interface CopyRecord {
  duplicateId: string;
  upstreamId: string;
  /** 1-based index of the copy and the number of copies the race planned. */
  index: number;
  of: number;
  /** Milliseconds since the epoch, by the store's clock. */
  receivedAt: number;
}

/** The outcome of the commit arbitration of one request. */
export type CommitRecord =
  | { state: 'none' }
  | { state: 'claimed'; holder: string; fence: number; leaseUntil: number }
  | { state: 'committed'; holder: string; fence: number; committedAt: number };

/** Everything the store knows of one original request. */
export interface RequestRecord {
  requestId: string;
  /** Session the request belongs to, or '' when none. */
  sessionId: string;
  update: boolean;
  /** Copies that workers reported receiving, in arrival order. */
  copies: CopyRecord[];
  /** Step "record the adoption": which copy / upstream produced the answer the proxy adopted. */
  adopted: { duplicateIds: string[]; upstreamIds: string[]; at: number } | null;
  /** Copies the proxy stopped after another copy committed. */
  cancelled: string[];
  commit: CommitRecord;
}

/** A session's adopted state. */
export interface SessionRecord {
  sessionId: string;
  data: Record<string, unknown>;
  /** Goes up by one on each promotion. */
  version: number;
  updatedAt: number;
}

export interface RecordCopyInput {
  requestId: string;
  duplicateId: string;
  upstreamId: string;
  index: number;
  of: number;
  update: boolean;
  sessionId: string;
}

export interface RecordAdoptionInput {
  requestId: string;
  sessionId: string;
  update: boolean;
  duplicateIds: string[];
  upstreamIds: string[];
  /**
   * `false` when the adopted copy said it saved no session change (or the
   * client cannot come back to the session: it was minted for this request
   * and the answer set no cookie). There is then nothing to promote, and a
   * store may skip the session's side of the adoption. Absent: unknown.
   */
  sessionChanged?: boolean;
}

export interface ClaimOptions {
  /** How long the claim holds without a confirm or release before another copy may take over. */
  leaseMs: number;
  /** Stops waiting (rejects with the signal's reason). */
  signal?: AbortSignal;
}

/** A held claim: the right to commit, with its fencing token. */
export interface ClaimGrant {
  /** Fencing token: strictly greater than every fence granted before by this store. */
  fence: number;
  leaseUntil: number;
}

/** An answer kept for an `Idempotency-Key`, to replay to a retry. */
export interface StoredAnswer {
  status: number;
  headers: Record<string, string | string[]>;
  /** The body, base64. */
  body: string;
}

/** What `beginIdempotent` found. */
export type IdempotencyState =
  /**
   * This request owns the key now, until `completeIdempotent` or the lock
   * runs out. `requestId` is the id to run the update under: the caller's own
   * for a new key; the first attempt's when an earlier attempt ended without
   * a final answer (`attempt` > 1, a resumed request). Running a retry under
   * the same request id is what keeps it exactly once: a copy of the earlier
   * attempt that still commits, or already did, holds the same claim.
   */
  | { state: 'started'; requestId: string; attempt: number }
  /** Another attempt with this key and the same fingerprint holds the lock now (409, or wait). */
  | { state: 'in-flight'; requestId: string }
  /** The key was used with another fingerprint, a different request (422). */
  | { state: 'mismatch' }
  /** A request with this key finished: replay its answer. */
  | { state: 'completed'; requestId: string; answer: StoredAnswer };

/** What every store has besides its roles: a way to let go of what it opened. */
export interface Closable {
  /** Releases timers and connections the store itself opened. */
  close(): Promise<void>;
}

/**
 * Role 1 of a session store, the **request log**: who processed what. The
 * workers record each copy they receive (step "receive and record"), the
 * proxy the copies it adopted (step "record the adoption") and the ones it
 * stopped; anyone may read a request's record.
 */
export interface RequestLog {
  /**
   * Step "receive and record": a worker received a copy. Resolves `{ duplicate: true }` when
   * this copy id was already recorded (a replayed copy), without changing it.
   */
  recordCopy(input: RecordCopyInput): Promise<{ duplicate: boolean }>;

  /**
   * Step "record the adoption": the proxy adopted the answer of these copies.
   * The first adoption recorded stands; recording the same adoption again,
   * or a different one, changes nothing. (The session state reacts to the
   * same call: see {@link SessionState.recordAdoption}.)
   */
  recordAdoption(input: RecordAdoptionInput): Promise<void>;

  /** The proxy stopped this copy because another one committed. */
  recordCancelled(requestId: string, duplicateId: string): Promise<void>;

  /** A request's record: its copies, the adopted ones, the stopped ones, its commit state; undefined when unknown. */
  getRequest(requestId: string): Promise<RequestRecord | undefined>;

  /**
   * Optional: sends soon (the Redis store: at the end of this turn) the
   * records the store holds back to batch them (its `batch.maxDelay`). A
   * worker calls it when it is about
   * to wait for a read's copy record, without waiting for it (a promise it
   * returns is only watched for a failure, reported as an `error` event); a
   * store that writes each record at once needs none.
   */
  flushRecords?(): void | Promise<void>;
}

/**
 * Role 2, the **session state**: a session's adopted state, and the
 * candidates of the copies still racing. Only the adopted copy's candidate
 * becomes the session's state, whichever of the candidate and the adoption
 * arrives first; the other copies' candidates are discarded.
 */
export interface SessionState {
  /**
   * Saves what a copy's handler left in its session data, as that copy's
   * candidate. Nothing the client can see changes until the copy is adopted.
   * With `sessionId` '' nothing is saved.
   */
  saveCandidate(sessionId: string, requestId: string, duplicateId: string, data: Record<string, unknown>): Promise<void>;

  /**
   * The adoption, as the session state sees it: promotes the first adopted
   * copy's session candidate (if it saved one) to the session's adopted
   * state, once, and discards the request's other candidates. The same call
   * as {@link RequestLog.recordAdoption}: one store plays both roles.
   */
  recordAdoption(input: RecordAdoptionInput): Promise<void>;

  /** A session's adopted state; undefined when it has none. */
  getSession(sessionId: string): Promise<SessionRecord | undefined>;
}

/**
 * Role 3, the **commit arbitration** (step "first committed wins"): exactly
 * one copy of an update holds the right to commit at a time, with a lease
 * and a fencing token; the others wait, and lose when it confirms or take
 * over when it releases or vanishes. The outcome shows in the request log's
 * record (`RequestRecord.commit`).
 */
export interface CommitArbiter {
  /**
   * Asks for the right to commit `requestId`. Exactly one copy holds it at a
   * time. While another copy holds it, waits: rejects with `SupersededError`
   * when the holder confirms; takes over when the holder releases or its lease
   * runs out. Rejects with `SupersededError` at once when already committed.
   * A holder asking again during its lease gets its own grant back.
   */
  claim(requestId: string, duplicateId: string, options: ClaimOptions): Promise<ClaimGrant>;

  /**
   * The holder committed. Rejects with `SupersededError` if it no longer holds
   * the claim (lease lost and taken over), with `committedBy` set when the
   * store knows: the committer's duplicate id, or null when no copy has
   * committed. Confirming again with the same fence is harmless.
   */
  confirm(requestId: string, duplicateId: string, fence: number): Promise<void>;

  /** The holder gives the claim up (its commit failed). A no-op for anyone but the current holder. */
  release(requestId: string, duplicateId: string, fence: number): Promise<void>;
}

/**
 * Role 4, **idempotency**: `Idempotency-Key`s, each bound to the request id
 * of its first attempt for its TTL, so that a retry replays the answer or
 * resumes the same request, never applies the update twice.
 */
export interface IdempotencyStore {
  /**
   * Takes an `Idempotency-Key` (already scoped by the caller) for a request,
   * atomically. A new key is kept `ttlMs` (and never less than an attempt's
   * lock), whatever happens to the attempt: a key is never forgotten inside
   * its TTL (a store that cannot keep one more rejects with
   * `RP_ERR_STORE_FULL` instead). The attempt holds the key
   * `in-flight` for at most `lockMs`; after that (its gateway died), or once
   * it was completed with `null`, the next caller takes it over under the
   * key's original request id (`attempt` + 1).
   */
  beginIdempotent(key: string, fingerprint: string, requestId: string, lockMs: number, ttlMs: number): Promise<IdempotencyState>;

  /**
   * Ends the attempt that holds `key` (`requestId` and `attempt` as
   * `beginIdempotent` returned them): with an answer, kept `ttlMs` from now
   * and replayed to retries; with `null` (no final answer: the outcome is
   * not known, or nothing was applied), the lock is released and the key
   * kept, so the next retry resumes the same request id. A no-op unless that
   * attempt still holds the key. Rejects with `RP_ERR_STORE_FULL` when the
   * answer does not fit the store's bounds (the key stays held; the caller
   * may complete it again with a smaller answer).
   */
  completeIdempotent(key: string, requestId: string, answer: StoredAnswer | null, ttlMs: number, attempt: number): Promise<void>;
}

/**
 * What a session store does: the session management server of the method,
 * in its four roles, {@link RequestLog}, {@link SessionState},
 * {@link CommitArbiter} and {@link IdempotencyStore}, played by one object
 * (the adoption ties the first two together, the commit state shows in the
 * request log). Implementations: `MemorySessionStore` (one process),
 * `RedisSessionStore` (`redundant-proxy/redis`), or your own, checked by
 * `testSessionStore` (each role alone: `conformance.requestLog`, …) from
 * `redundant-proxy/testing`.
 *
 * Every method may reject; callers on the read path treat a rejection as a
 * bookkeeping failure (an event), callers on the update path fail closed.
 */
export interface SessionStore extends RequestLog, SessionState, CommitArbiter, IdempotencyStore, Closable {}
