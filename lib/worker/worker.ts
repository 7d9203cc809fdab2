import type { IncomingMessage, ServerResponse } from 'node:http';
import { LRUCache } from 'lru-cache';
import { Emitter } from '../events.js';
import { detectFramework } from '../framework.js';
import { reportError, warnOnce } from '../warn.js';
import { expressWorker, koaWorker } from './frameworks.js';
import { resolveWorkerOptions, type WorkerOptions } from './options.js';
import type { WorkerContext } from './prepare.js';
import { WORKER_EVENTS, type KoaWorkerContext, type RedundantWorker, type WorkerErrorEvent, type WorkerEvents } from './types.js';

// redundantWorker(): the method's application-server side. Each copy is
// verified and recorded (lib/worker/prepare.ts), handled with its handle and
// commit gate (lib/worker/commit.ts), and its session change saved before its
// answer ends (lib/worker/session.ts); lib/worker/frameworks.ts does that in
// Koa and in Express.

export type { WorkerOptions } from './options.js';
export type { RedundantHandle, WorkerErrorEvent, WorkerEvents, RedundantWorker, KoaWorkerContext } from './types.js';

/**
 * Middleware for each application server: verifies the copy's signed
 * headers, records the copy (step "receive and record"), and exposes the
 * per-request handle.
 */
export function redundantWorker(options: WorkerOptions): RedundantWorker {
  const { id, store, secret, maxSkew, storeTimeout, lease, now } = resolveWorkerOptions(options);
  const events = new Emitter<WorkerEvents>(WORKER_EVENTS);
  const report = reportError(events, (e: WorkerErrorEvent) => `redundant-proxy worker: ${e.operation} failed`);
  const warnUnchecked = warnOnce((message) => console.warn(message));
  const w: WorkerContext = {
    id,
    store,
    secret,
    maxSkew,
    storeTimeout,
    lease,
    now,
    seen: secret === undefined ? null : new LRUCache<string, true>({ max: 100_000, ttl: 2 * maxSkew, perf: { now } }),
    events,
    report: (requestId, operation, error) => {
      // A handler that fails after its commit is the app's bug, said every time, as the frameworks say their errors.
      if (operation === 'handler' && !events.has('error')) console.error(`redundant-proxy worker "${id}": request ${requestId}: the handler threw after its commit; the copy answered 502 RP_ERR_ANSWER_LOST:`, error);
      else report({ requestId, operation, error });
    },
    unchecked: () =>
      warnUnchecked(
        `redundant-proxy worker "${id}": copies arrive signed (the proxy has a secret) but this worker has none, so it does not check them: anyone who reaches this server can send it copies (any session id, updates). Give redundantWorker() the proxy's secret (is the variable it comes from set?).`,
      ),
  };
  const express = expressWorker(w);

  const worker = function redundantWorkerMiddleware(a: IncomingMessage | KoaWorkerContext, b: unknown, c?: unknown): Promise<void> | void {
    const call = detectFramework<KoaWorkerContext>(a, b, c);
    if (call.kind === 'node') return express.middleware(call.req, call.res, call.next ?? (() => undefined));
    return koaWorker(w, call.ctx, call.next);
  } as RedundantWorker;
  worker.on = (name, listener) => events.on(name, listener);
  worker.errorHandler = express.errorHandler;
  return worker;
}
