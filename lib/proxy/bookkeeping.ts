import { codes, isSupersededError, RedundantProxyError } from '../errors.js';
import type { Emitter } from '../events.js';
import type { Scheduler, TimerHandle } from '../time.js';
import { TimeoutGroup, withTimeout } from '../timeout.js';
import { warnOnce } from '../warn.js';
import { sealId } from '../wire/protocol.js';
import type { CancelInfo, ResolvedOptions } from './options.js';
import type { ProxyEvents } from './proxy-events.js';
import type { CopyReport } from './report.js';

// The proxy's dealings with the session store around a race: step "record
// the adoption" and the cancelled copies' records (bounded, off the
// answer's path, reported and never failing a request), the cancel hook of
// step "first committed wins", and what an update that ends without an
// answer may tell its client. close() waits for what is still running.

export class Bookkeeping {
  /** Cancel hooks and bookkeeping writes still running: close() waits for them. */
  readonly background = new Set<Promise<void>>();
  /** Bounds the off-path bookkeeping writes (one timer for all of them). */
  readonly #offPath: TimeoutGroup;
  readonly #warn = warnOnce();

  constructor(
    readonly opts: ResolvedOptions,
    readonly time: Scheduler,
    readonly events: Emitter<ProxyEvents>,
  ) {
    this.#offPath = new TimeoutGroup(opts.storeTimeout);
  }

  /** Keeps `work` for close() to wait for. */
  track(work: Promise<void>): void {
    this.background.add(work);
    void work.finally(() => this.background.delete(work));
  }

  /** Waits for what is still running, then stops the shared timer. */
  async close(): Promise<void> {
    await Promise.allSettled(this.background);
    this.#offPath.close();
  }

  /**
   * Runs a store operation with a bound; a failure becomes an `error` event,
   * never a failed request. `critical`: an answer waits for it, so its bound
   * is exact; otherwise it is off the answer's path and shares one timer.
   */
  bookkeep(operation: Promise<unknown>, requestId: string, critical: boolean): Promise<void> {
    const { opts } = this;
    const bounded = critical ? withTimeout(operation, opts.storeTimeout, 'a bookkeeping write', this.time) : this.#offPath.track(operation, 'a bookkeeping write');
    const work = bounded.then(
      () => undefined,
      (error: unknown) => this.reportStoreError(requestId, error),
    );
    // close() waits for it (at most storeTimeout), so its outcome is still reported.
    this.background.add(work);
    void work.then(() => this.background.delete(work));
    return work;
  }

  reportStoreError(requestId: string | null, error: unknown): void {
    const { events } = this;
    if (events.has('error')) events.emit('error', { requestId, source: 'store', error });
    else this.#warn("redundant-proxy: session store bookkeeping failed (further failures are silent without an 'error' listener):", error);
  }

  /** Step "first committed wins": a copy stopped after another committed: its cancel hook runs (bounded), then the store records it. */
  cancelled(requestId: string, copy: CopyReport, committed: CopyReport): void {
    const { opts, time, events } = this;
    const work = (async () => {
      const controller = new AbortController();
      const info: CancelInfo = { requestId, duplicateId: copy.duplicateId, upstream: copy.upstream, committedBy: committed.upstream, signal: controller.signal };
      if (opts.onCancel) {
        const hook = opts.onCancel;
        let timer: TimerHandle | undefined;
        try {
          await Promise.race([
            Promise.resolve().then(() => hook(info)),
            new Promise<never>((_, reject) => {
              timer = time.setTimeout(() => {
                const err = new RedundantProxyError(codes.TIMEOUT, `onCancel did not finish within ${opts.cancelTimeout} ms`);
                controller.abort(err);
                reject(err);
              }, opts.cancelTimeout);
            }),
          ]);
        } catch (error) {
          events.emit('error', { requestId, source: 'onCancel', error });
        } finally {
          if (timer !== undefined) time.clearTimeout(timer);
        }
      }
      await this.bookkeep(opts.store.recordCancelled(requestId, copy.duplicateId), requestId, false);
      events.emit('copy:cancelled', { requestId, duplicateId: copy.duplicateId, upstream: copy.upstream, committedBy: committed.upstream });
    })();
    this.track(work);
  }

  /**
   * Updates: asked before the race answers a failure or a timeout, or adopts
   * at the timeout an answer that did not commit. The store's commit record
   * decides what the client may be told: a copy committed (its answer was
   * lost), a copy holds the claim now (the outcome is not known yet), or
   * nobody claimed. Before adopting an answer that did not commit while
   * copies are still out, the proxy seals the request (claims and confirms
   * it under its own id), so that no copy still out can commit after the
   * client was told nothing was.
   */
  async decideUpdate(requestId: string, adopting: boolean): Promise<RedundantProxyError | undefined> {
    const { opts, time } = this;
    const record = await withTimeout(opts.store.getRequest(requestId), opts.storeTimeout, 'getRequest', time);
    const commit = record?.commit;
    // Clients are told an upstream's label, never an id derived from its address.
    const upstreamOf = (holder: string) => {
      const id = record?.copies.find((c) => c.duplicateId === holder)?.upstreamId;
      return opts.upstreams.find((u) => u.id === id)?.label ?? 'unknown';
    };
    const seal = sealId(requestId);
    if (commit?.state === 'committed') {
      // Sealed by an earlier attempt of this request (an Idempotency-Key's retry): nothing was applied, and nothing can be.
      if (commit.holder === seal) return undefined;
      return answerLost(upstreamOf(commit.holder));
    }
    if (commit?.state === 'claimed') return outcomeUnknown(upstreamOf(commit.holder));
    if (!adopting) return undefined;
    const controller = new AbortController();
    const timer = time.setTimeout(() => controller.abort(new RedundantProxyError(codes.TIMEOUT, 'sealing took too long')), opts.storeTimeout);
    try {
      const grant = await opts.store.claim(requestId, seal, { leaseMs: opts.storeTimeout * 2, signal: controller.signal });
      await withTimeout(opts.store.confirm(requestId, seal, grant.fence), opts.storeTimeout, 'confirm', time);
      return undefined;
    } catch (err) {
      if (isSupersededError(err) && err.committedBy === seal) return undefined; // sealed meanwhile, by this proxy
      if (isSupersededError(err) && err.committedBy) return answerLost(upstreamOf(err.committedBy));
      // A copy claimed meanwhile (the seal had to wait), or the store failed.
      return outcomeUnknown(null);
    } finally {
      time.clearTimeout(timer);
    }
  }
}

const answerLost = (upstream: string) =>
  new RedundantProxyError(codes.ANSWER_LOST, `the update was applied (the store records its commit under upstream "${upstream}": the copy that committed it, or one that took the claim over and found it applied), but its answer was lost; do not retry it blindly`, { status: 502 });
const outcomeUnknown = (upstream: string | null) =>
  new RedundantProxyError(
    codes.OUTCOME_UNKNOWN,
    `${upstream ? `upstream "${upstream}" holds this update's commit` : "this update's commit is being decided"} and no answer came: it may or may not be applied; retry with the same Idempotency-Key to learn which`,
    { status: 503 },
  );
