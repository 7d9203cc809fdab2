import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { LRUCache } from 'lru-cache';
import { codes, RedundantProxyError } from '../errors.js';
import type { Emitter } from '../events.js';
import type { SessionStore } from '../store/types.js';
import { withTimeout } from '../timeout.js';
import { H, readCopyHeaders, type CopyClaims } from '../wire/protocol.js';
import { checkBody, type BodyCheck } from './body-check.js';
import { commitGate, type CommitGate } from './commit.js';
import { CopyTrace } from './tracing.js';
import type { RedundantHandle, WorkerErrorEvent, WorkerEvents } from './types.js';

// Before the handler runs: the copy's headers verified, the copy recorded
// (step "receive and record"), its session loaded, its commit gate made.

/** What every request of one worker shares: its options, its replay memory, its events. */
export interface WorkerContext {
  id: string;
  store: SessionStore;
  secret: string | Buffer | undefined;
  maxSkew: number;
  storeTimeout: number;
  lease: number;
  now: () => number;
  /**
   * Signed copies this process has accepted, for as long as their signature
   * is valid: a replay is refused at once, without a store round trip. (A
   * replay to another upstream fails the signature's upstream binding; one to
   * another process of this upstream is caught by the store's copy record.)
   * Null without a secret.
   */
  seen: LRUCache<string, true> | null;
  events: Emitter<WorkerEvents>;
  /** A bookkeeping failure: an `error` event, or a warning once without a listener. */
  report(requestId: string, operation: WorkerErrorEvent['operation'], error: unknown): void;
  /** Said once: signed copies reach a worker that has no secret to check them with. */
  unchecked(): void;
}

/** One copy, prepared for its handler. */
export interface Prepared {
  handle: RedundantHandle;
  gate: CommitGate;
  /** JSON of the session as loaded; undefined when candidates must not be saved. */
  sessionBefore: string | undefined;
  /** Whether the store had seen this copy before, or the error recording it. */
  recorded: Promise<boolean | Error>;
  /** A signed copy's body check; undefined without a secret or for a direct request. */
  body: BodyCheck | undefined;
  /** The copy's span, when tracing is on (lib/worker/tracing.ts); null for a direct request. */
  trace: CopyTrace | null;
}

type RefusalCode = (typeof codes)[keyof typeof codes];

const READ_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);

/** A copy refused with 401 before its handler ran; the `refused` event says why. */
export function refusal(w: WorkerContext, code: RefusalCode, reason: string): RedundantProxyError {
  w.events.emit('refused', { code, reason });
  return new RedundantProxyError(code, `copy refused: ${reason}`, { status: 401 });
}

/** The commit gate of one copy; a confirm that lands late becomes a `lateConfirm` event. */
function commitGateFor(w: WorkerContext, requestId: string, duplicateId: string, signal: AbortSignal, res: ServerResponse, body?: BodyCheck, trace?: CopyTrace | null): CommitGate {
  const gate = commitGate({
    store: w.store,
    requestId,
    duplicateId,
    leaseMs: w.lease,
    storeTimeout: w.storeTimeout,
    signal,
    res,
    // A signed copy claims only once its body arrived whole and matched the signature.
    mayClaim: body && (() => body.verified()),
    onLateConfirm: (fence, reason, error) => w.events.emit('lateConfirm', { requestId, duplicateId, fence, reason, error }),
    onStoreError: (operation, error) => w.report(requestId, operation, error),
    onStep: trace?.span.isRecording() ? (step, fence) => trace.step(step, fence) : undefined,
  });
  if (trace) trace.gate = gate;
  return gate;
}

/**
 * Checks the copy, records it and loads the session. Rejects with a 401
 * error for a refused copy. `target` is the request target as received
 * (Express: `req.originalUrl`, as a mounted sub-app rewrites `req.url`).
 * Everything up to the body check's installation runs synchronously, in
 * the tick the request arrived in when the worker is the first middleware.
 */
export async function prepare(w: WorkerContext, req: IncomingMessage, res: ServerResponse, target: string): Promise<Prepared> {
  const { id, store, secret, maxSkew, storeTimeout, now, seen } = w;
  const refuse = (code: RefusalCode, reason: string) => refusal(w, code, reason);
  const gateFor = (requestId: string, duplicateId: string, signal: AbortSignal, r: ServerResponse, body?: BodyCheck, trace?: CopyTrace | null) => commitGateFor(w, requestId, duplicateId, signal, r, body, trace);
  const controller = new AbortController();
  res.once('close', () => {
    if (!res.writableFinished) controller.abort(new RedundantProxyError(codes.CLOSED, 'the copy was stopped or the connection closed'));
  });
  const read = readCopyHeaders(req.headers, { method: req.method ?? '', target }, secret, now(), maxSkew);
  if (!read.ok) {
    if (read.reason !== 'absent') {
      throw read.reason === 'stale'
        ? refuse(codes.STALE_COPY, 'its timestamp is outside the accepted skew')
        : refuse(
            codes.BAD_SIGNATURE,
            read.reason === 'unsigned'
              ? 'it is not signed'
              : read.reason === 'malformed'
                ? 'its headers are malformed'
                : 'it does not match its signature (its method, target or signed headers differ from what the proxy signed, or another key signed it)',
          );
    }
    const requestId = randomUUID();
    const gate = gateFor(requestId, requestId, controller.signal, res);
    const handle = makeHandle(
      { requestId, duplicateId: requestId, upstreamId: id, copy: { index: 1, of: 1 }, update: !READ_METHODS.has(req.method ?? 'GET'), direct: true, idempotencyKey: null, signal: controller.signal, session: { id: '', data: {} } },
      gate,
    );
    return { handle, gate, sessionBefore: undefined, recorded: Promise.resolve(false), body: undefined, trace: null };
  }
  // The proxy signs and this worker cannot check: anyone who reaches this
  // replica can send it copies (another user's session, updates). Say so.
  if (secret === undefined && req.headers[H.signature] !== undefined) w.unchecked();
  const c: CopyClaims = read.claims;
  const trace = CopyTrace.start(req, res, c);
  if (secret !== undefined && c.upstreamId !== id) throw refuse(codes.WRONG_UPSTREAM, `it is addressed to upstream "${c.upstreamId}", this worker is "${id}"`);
  if (seen) {
    if (seen.has(c.duplicateId)) throw refuse(codes.REPLAYED_COPY, 'this copy was already received');
    seen.set(c.duplicateId, true);
  }
  // The body is signed by its hash: checked as it streams in (see checkBody).
  let body: BodyCheck | undefined;
  if (secret !== undefined) {
    const checked = checkBody(req, res, c.bodyHash!, controller.signal, (reason, code) => refuse(code ?? codes.BAD_SIGNATURE, reason));
    if (checked instanceof RedundantProxyError) throw checked;
    body = checked;
  }
  // Step "receive and record" (docs/design.md): this server received this copy. Resolves to whether the
  // copy was seen before, or to the store's error (handled at once, so a
  // failure is never an unhandled rejection while the session loads).
  const recorded: Promise<boolean | Error> = withTimeout(
    store.recordCopy({ requestId: c.requestId, duplicateId: c.duplicateId, upstreamId: c.upstreamId, index: c.index, of: c.of, update: c.update, sessionId: c.sessionId }),
    storeTimeout,
    'recordCopy',
  ).then(
    (r) => r.duplicate,
    (err: unknown) => {
      w.report(c.requestId, 'recordCopy', err);
      return err instanceof Error ? err : new Error(String(err));
    },
  );
  // The session loads while the copy is recorded: one round trip of latency, not two.
  const loading =
    c.sessionId && !c.sessionNew
      ? withTimeout(store.getSession(c.sessionId), storeTimeout, 'getSession').then(
          (s) => ({ ok: true as const, data: s ? s.data : {} }),
          (err: unknown) => ({ ok: false as const, err }),
        )
      : undefined;
  // Reads do not wait for the record (it is off the critical path); a
  // replay is still caught before its session candidate could be saved.
  // Updates wait: their commit arbitration needs the record first.
  if (c.update) {
    const duplicate = await recorded;
    if (duplicate instanceof Error) {
      // Fail closed: an update the store does not know of cannot be arbitrated.
      throw new RedundantProxyError(codes.STORE_UNAVAILABLE, 'the session store is unavailable; the update was not processed', { status: 503, cause: duplicate });
    }
    if (duplicate && secret !== undefined) throw refuse(codes.REPLAYED_COPY, 'this copy was already received');
  }
  const gate = gateFor(c.requestId, c.duplicateId, controller.signal, res, body, trace);
  const handle = makeHandle(
    { requestId: c.requestId, duplicateId: c.duplicateId, upstreamId: c.upstreamId, copy: { index: c.index, of: c.of }, update: c.update, direct: false, idempotencyKey: c.idempotencyKey ?? null, signal: controller.signal, session: { id: c.sessionId, data: {} } },
    gate,
  );
  let sessionBefore: string | undefined;
  if (c.sessionId && c.sessionNew) sessionBefore = '{}';
  else if (loading) {
    const loaded = await loading;
    if (loaded.ok) {
      handle.session.data = loaded.data;
      sessionBefore = JSON.stringify(loaded.data);
    } else {
      w.report(c.requestId, 'getSession', loaded.err);
      // An update would commit what it decided from an empty session: fail closed.
      if (c.update) {
        throw new RedundantProxyError(codes.STORE_UNAVAILABLE, 'the session could not be loaded from the session store; the update was not processed', { status: 503, cause: loaded.err });
      }
      // A read is served without the adopted state; a candidate would
      // overwrite that state with a guess, so nothing is saved.
    }
  }
  // The body may have ended, forged, while the copy was recorded: the handler must not run then.
  if (body?.failed) throw body.failed;
  return { handle, gate, sessionBefore, recorded, body, trace };
}

function makeHandle(fields: Omit<RedundantHandle, 'claim' | 'commitOnce'>, gate: CommitGate): RedundantHandle {
  return { ...fields, claim: () => gate.claim(), commitOnce: (fn) => gate.commitOnce(fn) };
}
