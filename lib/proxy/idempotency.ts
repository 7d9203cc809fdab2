import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { codes, isRedundantProxyError, RedundantProxyError } from '../errors.js';
import type { IdempotencyState, SessionStore, StoredAnswer } from '../store/types.js';
import { withTimeout } from '../timeout.js';
import { CLIENT_HEADERS, sealId } from '../wire/protocol.js';
import type { CapturedAnswer, RaceReport } from './race.js';
import { sendError } from './respond.js';

// `Idempotency-Key` on updates (the IETF httpapi draft's semantics), made
// safe against clients that give up and retry, gateways that die and
// replicas that die after their commit:
//
// - A key is bound to one request id for its whole TTL. An attempt that ends
//   without a final answer (the client left, the timeout, a copy that held
//   the commit and vanished) releases the key without forgetting it, and the
//   next retry runs again *under the same request id*. So whatever the first
//   attempt's copies still do, they and the retry's copies arbitrate one
//   commit: exactly one copy commits, and the retry learns it (its copies
//   lose, or find the commit applied) instead of applying it a second time.
// - A key is completed with the answer before the answer's last byte goes
//   out, so a retry sent the moment the answer arrived gets the replay.
// - A retry that finds the key held by a running attempt waits for its
//   outcome (bounded by `idempotency.wait`), then gets `409` with `Retry-After`.
// - A store that fails while the key is taken or completed (down, frozen,
//   slower than `storeTimeout`) must not leave a key held with nothing
//   running: a completion that fails is tried again, backing off, until the
//   attempt's lock would have run out anyway; a take that timed out (it may
//   still land) is released the same way.

export interface KeyedAttempt {
  /** The key as the store keeps it (hashed; in its scope, if the proxy has one). */
  key: string;
  /** The key as the handlers see it (`h.idempotencyKey`): hashed with its sender, or in its scope. */
  appKey: string;
  /** The request id to run under: the first attempt's when this one resumes it. */
  requestId: string;
  /** 1 for a new key; more when this attempt resumes one that ended without a final answer. */
  attempt: number;
  /** Set once the key holds its final answer (or was released). */
  done: boolean;
  /** When the attempt took the key (ms, `Date.now`): its lock runs out `lockMs` later. */
  since: number;
}

export interface IdempotencyConfig {
  store: SessionStore;
  storeTimeout: number;
  /** How long an attempt holds the key before another may take it over (its gateway died). */
  lockMs: number;
  scope: ((req: IncomingMessage) => string | undefined) | undefined;
  ttl: number;
  /** Bytes of an answer body kept for replay. */
  maxAnswerSize: number;
  wait: number;
  /** A completion failed (the key then stays held until its lock runs out, and is resumed). */
  onStoreError: (requestId: string, error: unknown) => void;
}

export interface BeginContext {
  requestId: string;
  method: string;
  path: string;
  body: Buffer | null;
  sessionId: string | null;
}

const POLL_MIN_MS = 5;
const POLL_MAX_MS = 100;
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 2000;

export class Idempotency {
  /** Completions waiting to be tried again while the store fails; `close()` gives them up. */
  readonly #retrying = new Map<NodeJS.Timeout, () => void>();
  #closed = false;

  constructor(readonly config: IdempotencyConfig) {}

  /** Stops trying failed completions again (their keys' locks run out by themselves). */
  close(): void {
    this.#closed = true;
    for (const [timer, giveUp] of this.#retrying) {
      clearTimeout(timer);
      giveUp();
    }
    this.#retrying.clear();
  }

  /**
   * Runs `work` until it succeeds, backing off while it throws, until
   * `deadline`. The first failure is reported (`failed`: it was, already).
   */
  #persist(requestId: string, deadline: number, work: () => Promise<void>, failed = false): Promise<void> {
    let pause = RETRY_MIN_MS;
    let reported = failed;
    return new Promise<void>((resolve) => {
      const later = (): void => {
        if (this.#closed || Date.now() + pause > deadline) return resolve();
        const timer = setTimeout(() => {
          this.#retrying.delete(timer);
          attempt();
        }, pause);
        timer.unref();
        this.#retrying.set(timer, resolve);
        pause = Math.min(RETRY_MAX_MS, pause * 2);
      };
      const attempt = (): void => {
        work().then(resolve, (err: unknown) => {
          if (!reported) {
            reported = true;
            this.config.onStoreError(requestId, err);
          }
          later();
        });
      };
      if (failed) later();
      else attempt();
    });
  }

  /**
   * Takes the request's key, or answers the request itself (a replay, a
   * refusal). Resolves null when the request has no key to take.
   */
  async begin(req: IncomingMessage, res: ServerResponse, ctx: BeginContext): Promise<KeyedAttempt | 'answered' | null> {
    const cfg = this.config;
    const raw = firstHeader(req.headers[CLIENT_HEADERS.idempotencyKey]);
    if (raw === undefined) return null;
    // A structured-field string ("...") or a bare token.
    const value = raw.length >= 2 && raw.startsWith('"') && raw.endsWith('"') ? raw.slice(1, -1) : raw;
    if (!/^[\x21-\x7e]{1,255}$/.test(value)) {
      sendError(res, new RedundantProxyError(codes.BAD_IDEMPOTENCY_KEY, 'Idempotency-Key must be 1-255 visible ASCII characters', { status: 400 }), ctx.requestId);
      return 'answered';
    }
    // Your `scope` names a stable identity (a tenant, an account): the key
    // lives in its namespace. Without one, who sent the key is no stable
    // identity (a token refreshed or a session gained between two attempts),
    // so the store takes the key as it is, and who sent it is part of the
    // request it must match: the same key from another client is refused
    // (422), never run again, and never answered with another client's
    // answer. Who sent it: its session, else its credentials (Authorization
    // and Cookie: an app that signs clients in with a cookie of its own), else
    // nobody the proxy can tell apart. The key the handlers see
    // (`h.idempotencyKey`, a unique column) is the sender's own, so that two
    // clients who chose the same key never collide in the app's database.
    let key: string;
    let appKey: string;
    let sender = '';
    if (cfg.scope) {
      const scope = cfg.scope(req);
      if (scope === undefined) return null;
      key = appKey = sha256(`${scope}\0${value}`);
    } else {
      key = sha256(`\0${value}`);
      sender = senderOf(req, ctx.sessionId);
      appKey = sha256(`${sender}\0${value}`);
    }
    const fingerprint = sha256(Buffer.concat([Buffer.from(`${sender}\0${ctx.method} ${ctx.path}\0`), ctx.body ?? Buffer.alloc(0)]));
    const deadline = Date.now() + cfg.wait;
    let pause = POLL_MIN_MS;
    for (;;) {
      let state: IdempotencyState;
      try {
        state = await withTimeout(cfg.store.beginIdempotent(key, fingerprint, ctx.requestId, cfg.lockMs, cfg.ttl), cfg.storeTimeout, 'beginIdempotent');
      } catch (err) {
        // An update whose key cannot be checked is not run: it may be a retry of one that was applied.
        const full = isRedundantProxyError(err) && err.code === codes.STORE_FULL;
        // The take may still land (a store slower than storeTimeout): release
        // it, so that the key is not held with nothing running. (A take over
        // an earlier attempt cannot be told apart here; its lock runs out.)
        if (!full) void this.#persist(ctx.requestId, Date.now() + cfg.lockMs, () => cfg.store.completeIdempotent(key, ctx.requestId, null, cfg.ttl, 1));
        sendError(
          res,
          full
            ? new RedundantProxyError(codes.STORE_FULL, 'the session store holds as many Idempotency-Keys as it may; the update was not processed, retry later', { status: 503, cause: err })
            : new RedundantProxyError(codes.STORE_UNAVAILABLE, 'the session store is unavailable: the update was not processed', { status: 503, cause: err }),
          ctx.requestId,
          { 'retry-after': '1' },
        );
        return 'answered';
      }
      switch (state.state) {
        case 'started':
          // A store written before attempts existed says only 'started'.
          return { key, appKey, requestId: state.requestId ?? ctx.requestId, attempt: state.attempt ?? 1, done: false, since: Date.now() };
        case 'mismatch':
          sendError(res, new RedundantProxyError(codes.IDEMPOTENCY_MISMATCH, cfg.scope ? 'this Idempotency-Key was used for a different request' : 'this Idempotency-Key was used for a different request, or by another client (another session, Authorization or Cookie than its first use)', { status: 422 }), ctx.requestId);
          return 'answered';
        case 'completed': {
          const { status, body } = state.answer;
          let { headers } = state.answer;
          // A client the proxy cannot tell apart from others is not handed
          // cookies (a session, a sign-in) that its key alone would give
          // whoever guessed the key and the body.
          if (sender === ANONYMOUS) headers = withoutCookies(headers);
          const bytes = Buffer.from(body, 'base64');
          res.writeHead(status, { ...headers, 'content-length': String(bytes.length), [CLIENT_HEADERS.replayed]: 'true' });
          res.end(bytes);
          return 'answered';
        }
        case 'in-flight': {
          // Another attempt runs: wait for its outcome, while the client does.
          const left = deadline - Date.now();
          if (left > 0 && !res.destroyed) {
            await new Promise((r) => setTimeout(r, Math.min(pause, left)));
            pause = Math.min(POLL_MAX_MS, pause * 2);
            if (!res.destroyed) continue;
          }
          sendError(
            res,
            new RedundantProxyError(codes.IDEMPOTENCY_IN_FLIGHT, 'a request with this Idempotency-Key is still being processed; retry later to learn its outcome', { status: 409 }),
            state.requestId,
            { 'retry-after': '1' },
          );
          return 'answered';
        }
      }
    }
  }

  /**
   * Completes the key with the answer the client is getting, before its last
   * bytes go out. A committed answer too large to keep is kept as "applied,
   * answer lost"; an answer that committed nothing and cannot be kept
   * releases the key (a retry runs again, under the same request id).
   */
  async completeWon(attempt: KeyedAttempt, captured: CapturedAnswer | null, committed: boolean): Promise<void> {
    let answer: StoredAnswer | null = null;
    if (captured?.body && captured.body.length <= this.config.maxAnswerSize && (committed || captured.status < 500)) {
      answer = { status: captured.status, headers: captured.headers, body: captured.body.toString('base64') };
    } else if (committed) answer = lostAnswer(attempt.requestId, 'the update was applied; its answer is too large to replay');
    await this.#complete(attempt, answer, committed);
  }

  /**
   * After a race that did not complete the key: keeps "applied, answer lost"
   * when a copy committed, else releases the key so that a retry resumes the
   * same request id (whatever a copy of this attempt still does, the retry's
   * copies arbitrate the same commit).
   */
  async completeAfter(attempt: KeyedAttempt, report: RaceReport): Promise<void> {
    // A won race completed its key before its last byte (and keeps trying if
    // the store failed then).
    if (attempt.done || report.outcome === 'won') return;
    const { store, storeTimeout } = this.config;
    const applied = report.committed || report.outcome === 'answer-lost';
    await this.#persist(attempt.requestId, attempt.since + this.config.lockMs, async () => {
      let committed = applied;
      if (!committed && report.outcome !== 'outcome-unknown') {
        const record = await withTimeout(store.getRequest(attempt.requestId), storeTimeout, 'getRequest');
        committed = record?.commit.state === 'committed' && record.commit.holder !== sealId(attempt.requestId);
      }
      await this.#completeOnce(attempt, committed ? lostAnswer(attempt.requestId, 'the update was applied, but its answer was lost') : null, committed);
    });
  }

  /**
   * Whether this attempt resumes a request that an earlier attempt sealed
   * (it adopted an answer that committed nothing, and could not keep it):
   * nothing was applied under that request id, and nothing can be, since
   * every copy would lose to the seal. Then the key is released again (a
   * later retry learns the same) and true is the answer. False when the
   * store cannot say: the race runs, as before.
   */
  async sealedBefore(attempt: KeyedAttempt): Promise<boolean> {
    if (attempt.attempt === 1) return false;
    const { store, storeTimeout } = this.config;
    let record;
    try {
      record = await withTimeout(store.getRequest(attempt.requestId), storeTimeout, 'getRequest');
    } catch {
      return false;
    }
    if (record?.commit.state !== 'committed' || record.commit.holder !== sealId(attempt.requestId)) return false;
    await this.#complete(attempt, null, false);
    return true;
  }

  /** Completes the key now; while the store fails, keeps trying in the background (the answer does not wait for that). */
  async #complete(attempt: KeyedAttempt, answer: StoredAnswer | null, committed: boolean): Promise<void> {
    try {
      await this.#completeOnce(attempt, answer, committed);
    } catch (err) {
      this.config.onStoreError(attempt.requestId, err);
      void this.#persist(attempt.requestId, attempt.since + this.config.lockMs, () => this.#completeOnce(attempt, answer, committed), true);
    }
  }

  async #completeOnce(attempt: KeyedAttempt, answer: StoredAnswer | null, committed: boolean): Promise<void> {
    const { store, storeTimeout, ttl } = this.config;
    const complete = (a: StoredAnswer | null) => withTimeout(store.completeIdempotent(attempt.key, attempt.requestId, a, ttl, attempt.attempt), storeTimeout, 'completeIdempotent');
    try {
      await complete(answer);
    } catch (err) {
      // Full: keep the small truth instead (applied, or nothing to keep).
      if (!(answer && isRedundantProxyError(err) && err.code === codes.STORE_FULL)) throw err;
      await complete(committed ? lostAnswer(attempt.requestId, 'the update was applied; its answer could not be kept for replay') : null);
    }
    attempt.done = true;
  }
}

/** What a retry is answered when the update was applied but its answer is not there to replay. */
export function lostAnswer(requestId: string, message: string): StoredAnswer {
  return {
    status: 502,
    headers: { 'content-type': 'application/json; charset=utf-8', [CLIENT_HEADERS.requestId]: requestId },
    body: Buffer.from(JSON.stringify({ code: codes.ANSWER_LOST, message, requestId })).toString('base64'),
  };
}

const ANONYMOUS = 'anonymous';

/**
 * Who sent a key, when the proxy has no `scope`: the client's session; else
 * its credentials (Authorization and Cookie, hashed together); else nobody
 * the proxy can tell apart from other such clients.
 */
function senderOf(req: IncomingMessage, sessionId: string | null): string {
  if (sessionId !== null) return `session:${sessionId}`;
  const auth = firstHeader(req.headers.authorization) ?? '';
  const cookie = firstHeader(req.headers.cookie) ?? '';
  return auth || cookie ? `client:${sha256(`${auth}\0${cookie}`)}` : ANONYMOUS;
}

function withoutCookies(headers: Record<string, string | string[]>): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const name in headers) if (name.toLowerCase() !== 'set-cookie') out[name] = headers[name]!;
  return out;
}

function firstHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('base64url');
}
