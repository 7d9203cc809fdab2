import type { IncomingMessage, ServerResponse } from 'node:http';
import { AlreadyAppliedError, codes, isRedundantProxyError, isSupersededError, RedundantProxyError, SupersededError } from '../errors.js';
import { writeJsonAnswer, type JsonAnswer } from '../json-error.js';
import { COMMIT, FLAG_ON, H } from '../wire/protocol.js';
import { prepare, type Prepared, type WorkerContext } from './prepare.js';
import { holdEnd } from './session.js';
import type { KoaWorkerContext, RedundantHandle, RedundantWorker } from './types.js';

// The worker in Koa and in Express: the same steps, and the same answers for
// this library's errors, written to each framework's response.

/**
 * The answer to one of this library's errors, with the headers the proxy
 * reads: the commit outcome of a copy that lost (`409`, never adopted) or
 * found the update applied; for a refusal (`401`: before the handler ran, or
 * a signed body that did not arrive in full before a claim), its code, so
 * that the proxy counts it as this upstream's failure rather than an answer;
 * for a store that failed, a mark, so that it does not eject the replica for
 * it. With the request id, as the proxy's own errors carry it.
 */
function errorAnswer(err: RedundantProxyError, requestId: string | undefined): JsonAnswer {
  const headers: Record<string, string> = {};
  const lost = isSupersededError(err);
  if (lost) headers[H.commit] = COMMIT.lost;
  else if (err.code === codes.ALREADY_APPLIED) headers[H.commit] = COMMIT.applied;
  if (isRefusal(err)) headers[H.refused] = err.code;
  if (err.code === codes.STORE_UNAVAILABLE) headers[H.storeUnavailable] = FLAG_ON;
  return { status: lost ? 409 : err.status, body: requestId === undefined ? err.toJSON() : { ...err.toJSON(), requestId }, headers };
}

/** The request id a copy carries (the proxy's, in its headers): undefined for a direct request. */
function copyRequestId(req: IncomingMessage): string | undefined {
  const id = req.headers[H.requestId];
  return typeof id === 'string' && id.length <= 128 ? id : undefined;
}

/** The answer of a copy whose handler failed after its commit. */
function answerLost(err: unknown): RedundantProxyError {
  return new RedundantProxyError(codes.ANSWER_LOST, 'the update was applied (this copy committed it), but the handler failed before answering: its answer is lost; do not retry it blindly', {
    status: 502,
    cause: err,
  });
}

/**
 * Besides losses and refusals, the library's errors a Koa copy answers
 * itself; the others are the app's (Koa's error handling).
 */
const WORKER_ANSWERS = new Set<string>([codes.ALREADY_APPLIED, codes.ANSWER_LOST, codes.STORE_UNAVAILABLE]);

/** A refusal of the copy: only those are `401` (a loss is `409`). */
function isRefusal(err: RedundantProxyError): boolean {
  return err.status === 401;
}

/**
 * What a copy answers for an error its handler threw, in Koa and Express
 * alike: nothing when the proxy stopped the copy (nobody is listening);
 * `SupersededError` (409 `lost`, never adopted) when it lost the commit,
 * whatever it threw after learning it; this library's own error as it is;
 * undefined for any other error (the app's to answer).
 */
function answerFor(err: unknown, p: Prepared | undefined): 'stopped' | RedundantProxyError | undefined {
  if (p?.handle.signal.aborted && err === p.handle.signal.reason) return 'stopped';
  // A body that failed its signature took its connection down with it: whatever the handler threw, nobody listens.
  if (p?.body?.failed) return 'stopped';
  if (isSupersededError(err)) return err;
  if (p?.gate.outcome === COMMIT.lost) return new SupersededError();
  // Found applied by an earlier copy: whatever the handler threw after that.
  if (p?.gate.outcome === COMMIT.applied) return isRedundantProxyError(err) && err.code === codes.ALREADY_APPLIED ? (err as RedundantProxyError) : new AlreadyAppliedError();
  // This copy committed, then its handler failed before answering: the
  // update is applied and its answer lost. Said so (the proxy adopts it as
  // the committed answer, and replays it to a retry), never a bare 500 a
  // client would take for "not applied".
  if (p?.gate.outcome === COMMIT.won) return answerLost(err);
  // By brand, not instanceof: the error may come from another copy of this package.
  const e = err as RedundantProxyError;
  return isRedundantProxyError(err) && typeof e.status === 'number' && typeof e.toJSON === 'function' ? e : undefined;
}

function answerKoa(ctx: KoaWorkerContext, answer: JsonAnswer): void {
  ctx.status = answer.status;
  ctx.body = answer.body;
  for (const [name, value] of Object.entries(answer.headers ?? {})) ctx.set(name, value);
}

/** The worker as Koa middleware. */
export async function koaWorker(w: WorkerContext, ctx: KoaWorkerContext, next: () => Promise<unknown>): Promise<void> {
  ctx.set(H.worker, FLAG_ON);
  let p: Prepared;
  try {
    // Koa's ctx.req.url is rewritten by koa-mount; originalUrl is the target as received.
    p = await prepare(w, ctx.req, ctx.res, ctx.originalUrl ?? ctx.req.url ?? '');
  } catch (err) {
    if (!(err instanceof RedundantProxyError)) throw err;
    answerKoa(ctx, errorAnswer(err, copyRequestId(ctx.req)));
    return;
  }
  ctx.state.redundant = p.handle;
  holdEnd(w, ctx.res, p);
  try {
    // The handler runs in the copy's span's context (lib/worker/tracing.ts).
    await (p.trace ? p.trace.run(next) : next());
  } catch (err) {
    const answer = answerFor(err, p);
    if (answer === 'stopped') return;
    // Koa answers its other errors itself (the app's error handling).
    if (!answer || !(isSupersededError(answer) || isRefusal(answer) || WORKER_ANSWERS.has(answer.code))) throw err;
    if (answer.code === codes.ANSWER_LOST) w.report(p.handle.requestId, 'handler', err);
    answerKoa(ctx, errorAnswer(answer, p.handle.requestId));
  }
}

/** The worker as Express middleware, and its error handler. */
export function expressWorker(w: WorkerContext): { middleware: (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void; errorHandler: RedundantWorker['errorHandler'] } {
  /** Each request's copy state, for errorHandler. */
  const preparedFor = new WeakMap<IncomingMessage, Prepared>();

  function middleware(req: IncomingMessage & { redundant?: RedundantHandle; originalUrl?: string }, res: ServerResponse, next: (err?: unknown) => void): void {
    res.setHeader(H.worker, FLAG_ON);
    // A sub-app rewrites req.url; originalUrl is the target as received.
    prepare(w, req, res, req.originalUrl ?? req.url ?? '').then(
      (p) => {
        req.redundant = p.handle;
        preparedFor.set(req, p);
        holdEnd(w, res, p);
        if (p.trace) p.trace.run(next);
        else next();
      },
      (err) => {
        if (!(err instanceof RedundantProxyError)) return next(err);
        writeJsonAnswer(res, errorAnswer(err, copyRequestId(req)));
      },
    );
  }

  const errorHandler: RedundantWorker['errorHandler'] = (err, req, res, next) => {
    if (res.headersSent) return next(err);
    const answer = answerFor(err, preparedFor.get(req));
    if (answer === 'stopped') {
      res.destroy();
      return;
    }
    if (!answer) return next(err);
    const p = preparedFor.get(req);
    if (p && answer.code === codes.ANSWER_LOST) w.report(p.handle.requestId, 'handler', err);
    writeJsonAnswer(res, errorAnswer(answer, p?.handle.requestId ?? copyRequestId(req)));
  };
  return { middleware, errorHandler };
}
