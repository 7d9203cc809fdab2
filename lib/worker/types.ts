import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Disposable } from '../events.js';
import type { Claim } from './commit.js';

// The worker's public types: the per-request handle, its events, and the
// middleware itself.

/** The per-request handle: `ctx.state.redundant` (Koa) or `req.redundant` (Express). */
export interface RedundantHandle {
  /** The original request's id, shared by every copy. */
  requestId: string;
  /** This copy's own id. */
  duplicateId: string;
  /** The upstream id the proxy sent this copy to. */
  upstreamId: string;
  /** 1-based index of this copy among `of` planned copies. */
  copy: { index: number; of: number };
  update: boolean;
  /** True when the request did not come through the proxy. */
  direct: boolean;
  /**
   * The update's `Idempotency-Key` as the proxy hashed it with who sent it
   * (in its `scope`, if the proxy has one; 43 characters of base64url), the
   * same for every retry of that client with that key; null without one. Keep it in a unique column next to the request id: if the
   * session store ever forgets the key (a Redis restarted without
   * persistence), a retry runs under a new request id, and only this column
   * can tell that it was applied (throw `AlreadyAppliedError`).
   */
  idempotencyKey: string | null;
  /** Aborted when the proxy stops this copy or the connection closes. */
  signal: AbortSignal;
  /**
   * The session's adopted state. Change `data` (or replace it with another
   * plain object); what it holds when the handler finishes is saved as this
   * copy's candidate, and becomes the session's state if the proxy adopts
   * this copy's answer.
   */
  session: { id: string; data: Record<string, unknown> };
  /**
   * Asks the store for the right to commit this request. Resolves when this
   * copy holds it; while another copy holds it, waits. Rejects with
   * `SupersededError` when another copy committed: roll back and rethrow.
   * Rejects with a `503` error (`RP_ERR_STORE_UNAVAILABLE`) when the store is
   * unreachable: never commit then.
   */
  claim(): Promise<Claim>;
  /**
   * `claim()`, then `fn(fence)`, then `confirm()`; if `fn` throws, `release()`
   * and rethrow. If `fn` throws `AlreadyAppliedError` (the request's unique
   * row was already in the database: an earlier copy committed, then died
   * before confirming), the request is recorded as committed instead and the
   * copy answers `x-redundant-commit: applied`. A copy stopped by the proxy
   * while it waited for the claim never runs `fn`.
   */
  commitOnce<T>(fn: (fence: number) => T | Promise<T>): Promise<T>;
}

export interface WorkerErrorEvent {
  requestId: string;
  /**
   * What failed: recording the copy, loading the session, saving the
   * candidate, or an update's claim (the copy then answered 503
   * `RP_ERR_STORE_UNAVAILABLE`, as it does when an update's copy cannot be
   * recorded or its session loaded); or `handler`: the handler threw after
   * this copy committed the update, and the copy answered `502`
   * `RP_ERR_ANSWER_LOST` (applied, its answer lost) in its place. `error`
   * is what the handler threw. Without a listener, each of those is
   * `console.error`ed (a store failure is said once).
   */
  operation: 'recordCopy' | 'getSession' | 'saveCandidate' | 'claim' | 'handler';
  error: unknown;
}

export interface WorkerEvents {
  /**
   * A store operation failed: a read was still served; an update was refused
   * with 503 (see `operation`). Or a handler threw after its commit
   * (`operation: 'handler'`).
   */
  error: WorkerErrorEvent;
  /**
   * A copy was refused with 401 before the handler ran; or a signed copy's
   * body turned out not to be the one signed (or did not arrive in full
   * before a claim): nothing of it may commit.
   */
  refused: { code: string; reason: string };
  /**
   * A copy's commit stands although the store did not record it: its lease
   * had run out and another copy had taken the claim over (`lease-lost`), or
   * the store could not be reached (`store-unavailable`). Any other copy's
   * commit must then be refused by the database (a unique row per request
   * id), or the update is applied twice. Worth an alert: for `lease-lost`,
   * raise `lease` above your slowest commit.
   */
  lateConfirm: { requestId: string; duplicateId: string; fence: number; reason: 'lease-lost' | 'store-unavailable'; error: unknown };
}

/** The names of {@link WorkerEvents}. */
export const WORKER_EVENTS = ['error', 'refused', 'lateConfirm'] as const satisfies readonly (keyof WorkerEvents)[];
// Every event listed: a name added to WorkerEvents and not here fails this line.
const _every: Exclude<keyof WorkerEvents, (typeof WORKER_EVENTS)[number]> extends never ? true : never = true;
void _every;

export interface RedundantWorker {
  (ctx: KoaWorkerContext, next: () => Promise<unknown>): Promise<void>;
  (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void): void;
  on<K extends keyof WorkerEvents>(name: K, listener: (event: WorkerEvents[K]) => void): Disposable;
  /**
   * Express only: an error-handling middleware that answers this library's
   * errors (`SupersededError` → 409 `lost`, `AlreadyAppliedError` → 409
   * `applied`, store unavailable → 503) as JSON with their `code`, answers
   * 409 `lost` for any error of a copy that lost
   * the commit, `502` `RP_ERR_ANSWER_LOST` for any error of a copy that
   * committed (applied, its answer lost; the `error` event says what was
   * thrown), and drops the error of a copy the proxy stopped (its `signal`'s
   * reason) without answering; other errors go on to your handlers. Mount it
   * after your routes: `app.use(worker.errorHandler)`. (Koa needs nothing:
   * the worker does the same itself.)
   */
  errorHandler: (err: unknown, req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void;
}

/** The part of a Koa context the worker uses. */
export interface KoaWorkerContext {
  req: IncomingMessage;
  /** The request target as received, before a mounted sub-app rewrote `url`. */
  originalUrl?: string;
  res: ServerResponse;
  state: Record<string, unknown>;
  status: number;
  body: unknown;
  set(name: string, value: string): void;
}

