import { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { codes, RedundantProxyError } from '../../lib/errors.js';
import type { ResolvedSelect } from '../../lib/proxy/options.js';
import { Race, type CopyReport, type RaceReport } from '../../lib/proxy/race.js';
import { VirtualTime } from './virtual-time.js';

// A race driven event by event, with the test playing undici's role at the
// dispatcher boundary (the race's `Dispatcher.DispatchHandler` is the seam)
// and the client's, on a virtual clock. What the race did is recorded for
// the invariants to check.

type Headers = Record<string, string | string[] | undefined>;

/** A client's response, recording what the race did to it. */
export class FakeResponse extends EventEmitter {
  headersSent = false;
  destroyed = false;
  writableEnded = false;
  statusCode = 200;
  heads = 0;
  body: Buffer[] = [];
  /** What went wrong with the order of the race's calls, if anything. */
  misuse: string[] = [];

  writeHead(status: number): this {
    if (this.destroyed) this.misuse.push('writeHead after the client left');
    if (this.headersSent) this.misuse.push('a second head');
    this.heads++;
    this.headersSent = true;
    this.statusCode = status;
    return this;
  }

  write(chunk: Buffer | string): boolean {
    if (!this.headersSent) this.misuse.push('a body before the head');
    if (this.writableEnded) this.misuse.push('a body after the end');
    if (this.destroyed) this.misuse.push('a body after destroy (after an error or the client left)');
    this.body.push(Buffer.from(chunk));
    // A slow client: its socket is full after every chunk until it drains.
    return !this.slow;
  }

  /** Write returns false (the socket is full) until `drain`. */
  slow = false;

  end(chunk?: Buffer | string): this {
    if (chunk !== undefined) this.write(chunk);
    if (this.writableEnded) this.misuse.push('a second end');
    if (this.destroyed) this.misuse.push('end after destroy');
    this.writableEnded = true;
    return this;
  }

  destroy(): this {
    this.destroyed = true;
    return this;
  }

  /** The client goes away (after a complete answer, that is only the connection closing). */
  leave(): void {
    if (this.destroyed || this.left) return;
    this.left = true;
    if (!this.writableEnded) this.destroyed = true;
    this.emit('close');
  }

  left = false;
}

/** One copy's exchange as undici would run it. */
export class Exchange {
  dispatched = false;
  started = false;
  aborted = false;
  paused = false;
  /** A final head came. */
  answered = false;
  /** onResponseEnd or onResponseError came. */
  over = false;
  status = 0;
  commit: string | undefined;
  chunks: Buffer[] = [];
  delivered = 0;
  handler: Dispatcher.DispatchHandler | null = null;
  readonly controller: Dispatcher.DispatchController;

  constructor(readonly index: number) {
    const self = this;
    this.controller = {
      abort() {
        self.aborted = true;
      },
      pause() {
        self.paused = true;
      },
      resume() {
        self.paused = false;
      },
      get aborted() {
        return self.aborted;
      },
      get paused() {
        return self.paused;
      },
      reason: null,
    } as unknown as Dispatcher.DispatchController;
  }

  get bodyLeft(): number {
    return this.chunks.length - this.delivered;
  }
}

export interface HarnessConfig {
  copies: number;
  update: boolean;
  select: ResolvedSelect;
  hedgeDelay: number;
  timeout: number;
  maxAnswerSize: number;
  /** The adopted copy's head waits for a promise (a session's adoption being recorded). */
  asyncHead: boolean;
  /** The last chunk waits for a promise (an Idempotency-Key being completed); the race goes on without its client. */
  beforeEnd: boolean;
  /** Updates: what the store says when asked before a failure or a timeout. */
  store: 'nothing' | 'committed' | 'claimed';
  /** The client reads slowly: every write fills its socket until it drains. */
  slowClient: boolean;
  /** Hedges the budget allows (Infinity: no limit). */
  hedges: number;
  /** `accept` throws on a 404 (it then counts as not acceptable, and is reported). */
  acceptThrows: boolean;
  /** The `perTryTimeout` option, in ms; 0: off. */
  perTryTimeout?: number;
  /** The `retry` option: copies whose connection fails before their request starts are sent again. */
  retry?: boolean;
}

export class Harness {
  readonly vt = new VirtualTime();
  readonly res = new FakeResponse();
  readonly exchanges: Exchange[];
  readonly race!: Race;
  report: RaceReport | null = null;
  /** Copies whose `x-redundant-commit: won` head was delivered, in order. */
  readonly wonHeads: number[] = [];
  /** Set when the race first adopted a copy: was a committed head known then, and whose. */
  adoption: { index: number; committedBefore: number[] } | null = null;
  readonly cancelled: Array<{ copy: CopyReport; committed: CopyReport }> = [];
  readonly errors: Array<{ source: string; error: unknown }> = [];
  readonly inFlight = new Map<string, number>();
  copiesStarted = 0;
  /** Something a handler threw (an illegal lifecycle move throws under test). */
  thrown: unknown[] = [];
  /** Copies dispatched after the race had adopted an answer. */
  sentAfterAdoption = 0;
  /** Dispatches, retries included. */
  dispatches = 0;
  /** Copies dispatched again although their request had started (gone out). */
  retriedAfterStart = 0;
  /** The proxy's steps the race waits for (the adoption's bookkeeping, the key's completion, the store's word), resolved by the test. */
  readonly hooks: Array<() => void> = [];

  constructor(readonly config: HarnessConfig) {
    this.exchanges = Array.from({ length: config.copies }, (_, i) => new Exchange(i));
    this.#hedges = config.hedges;
    const targets = this.exchanges.map((_, i) => ({ id: `u${i}`, label: `u${i}`, origin: 'http://127.0.0.1', prefix: '', url: 'http://127.0.0.1' }));
    const dispatchers = new Map<string, Dispatcher>(
      this.exchanges.map((ex, i) => [
        `u${i}`,
        {
          dispatch: (_opts: unknown, handler: Dispatcher.DispatchHandler) => {
            if (this.race?.winner) this.sentAfterAdoption++;
            this.dispatches++;
            if (ex.dispatched) {
              // A retry: the same copy on a new connection.
              if (ex.started) this.retriedAfterStart++;
              Object.assign(ex, { started: false, over: false, aborted: false, paused: false, answered: false });
            }
            ex.dispatched = true;
            ex.handler = handler;
            return true;
          },
        } as unknown as Dispatcher,
      ]),
    );
    const store = config.store;
    this.race = new Race({
      requestId: 'r',
      method: config.update ? 'POST' : 'GET',
      path: '/',
      update: config.update,
      sessionId: '',
      sessionNew: false,
      headers: [],
      body: null,
      targets: targets as never,
      dispatchers,
      hedgeDelay: config.hedgeDelay,
      budget: { take: () => this.#hedges-- > 0 },
      timeout: config.timeout,
      accept: (r) => {
        if (config.acceptThrows && r.status === 404) throw new Error('accept threw');
        return r.status < 500;
      },
      select: config.select,
      maxAnswerSize: config.maxAnswerSize,
      secret: undefined,
      time: this.vt,
      wallClock: () => 0,
      res: this.res as unknown as ServerResponse,
      observer: {
        copySent: () => undefined,
        copyStarted: (id) => {
          this.copiesStarted++;
          this.inFlight.set(id, (this.inFlight.get(id) ?? 0) + 1);
        },
        copyEnded: (id) => void this.inFlight.set(id, (this.inFlight.get(id) ?? 0) - 1),
        workerSeen: () => undefined,
        refused: () => undefined,
        cancelled: (_id, copy, committed) => void this.cancelled.push({ copy: { ...copy }, committed: { ...committed } }),
        error: (_id, source, error) => void this.errors.push({ source, error }),
        secondCommit: (_id, error) => void this.errors.push({ source: 'internal', error }),
      },
      beforeHead: config.asyncHead ? () => this.#later({ 'x-adopted': '1' }) : undefined,
      beforeEnd: config.beforeEnd ? () => this.#later(undefined) : undefined,
      beforeFailure: config.update
        ? () =>
            this.#later(
              store === 'committed'
                ? new RedundantProxyError(codes.ANSWER_LOST, 'applied, answer lost', { status: 502 })
                : store === 'claimed'
                  ? new RedundantProxyError(codes.OUTCOME_UNKNOWN, 'claimed', { status: 503 })
                  : undefined,
            )
        : undefined,
      capture: config.beforeEnd ? 1024 : 0,
      perTryTimeout: config.perTryTimeout ?? 0,
      retry: config.retry ? { attempts: 2, backoff: 5, maxBackoff: 20 } : false,
    });
  }

  #hedges: number;

  #later<T>(value: T): Promise<T> {
    return new Promise((resolve) => this.hooks.push(() => resolve(value)));
  }

  /** The oldest step the race waits for is done. */
  hook(): boolean {
    const next = this.hooks.shift();
    if (!next) return false;
    this.call(next);
    return true;
  }

  /** The client's socket drained. */
  drain(): boolean {
    if (this.res.listenerCount('drain') === 0) return false;
    this.call(() => this.res.emit('drain'));
    return true;
  }

  start(): void {
    this.res.slow = this.config.slowClient;
    this.call(() => this.race.start().then((r) => void (this.report = r)));
  }

  /** Runs a handler call as undici would, recording what it throws. */
  call(fn: () => unknown): void {
    try {
      fn();
    } catch (err) {
      this.thrown.push(err);
    }
    this.#watchAdoption();
  }

  #watchAdoption(): void {
    const winner = this.race.winner;
    if (winner && !this.adoption) this.adoption = { index: winner.report.index - 1, committedBefore: [...this.wonHeads] };
  }

  // ---- undici's side: each returns false when the event cannot happen now ----

  requestStart(i: number): boolean {
    const ex = this.exchanges[i]!;
    if (!ex.dispatched || ex.started || ex.over) return false;
    ex.started = true;
    this.call(() => ex.handler!.onRequestStart?.(ex.controller, {}));
    return true;
  }

  interim(i: number): boolean {
    const ex = this.exchanges[i]!;
    if (!ex.started || ex.answered || ex.over || ex.aborted) return false;
    this.call(() => ex.handler!.onResponseStart?.(ex.controller, 103, { link: '</a.css>; rel=preload' }, 'Early Hints'));
    return true;
  }

  head(i: number, status: number, commit: string | undefined, framing: 'length' | 'chunked' | 'large', body: string, refused: boolean): boolean {
    const ex = this.exchanges[i]!;
    if (!ex.started || ex.answered || ex.over || ex.aborted) return false;
    ex.answered = true;
    ex.status = status;
    // A worker refuses a copy before its handler runs: such an answer never carries a commit.
    if (refused) commit = undefined;
    ex.commit = commit;
    const bytes = status === 204 || status === 304 ? Buffer.alloc(0) : Buffer.from(body);
    ex.chunks = framing === 'large' ? [LARGE] : bytes.length > 0 ? [bytes.subarray(0, 1), bytes.subarray(1)].filter((b) => b.length > 0) : [];
    const headers: Headers = { 'x-redundant-worker': '1' };
    if (framing === 'length') headers['content-length'] = String(bytes.length);
    else if (framing === 'large') headers['content-length'] = String(LARGE.length);
    else headers['transfer-encoding'] = 'chunked';
    if (commit) headers['x-redundant-commit'] = commit;
    if (refused) headers['x-redundant-refused'] = 'RP_ERR_BAD_SIGNATURE';
    if (commit === 'won') this.wonHeads.push(i);
    this.call(() => ex.handler!.onResponseStart?.(ex.controller, status, headers, ''));
    return true;
  }

  data(i: number): boolean {
    const ex = this.exchanges[i]!;
    if (!ex.answered || ex.over || ex.aborted || ex.paused || ex.bodyLeft === 0) return false;
    const chunk = ex.chunks[ex.delivered++]!;
    this.call(() => ex.handler!.onResponseData?.(ex.controller, chunk));
    return true;
  }

  end(i: number): boolean {
    const ex = this.exchanges[i]!;
    if (!ex.answered || ex.over || ex.aborted || ex.paused || ex.bodyLeft > 0) return false;
    ex.over = true;
    this.call(() => ex.handler!.onResponseEnd?.(ex.controller, {}));
    return true;
  }

  /** The connection cannot be made: the copy fails before its request starts (nothing was sent). */
  refuse(i: number): boolean {
    const ex = this.exchanges[i]!;
    if (!ex.dispatched || ex.started || ex.over) return false;
    ex.over = true;
    const err = Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
    this.call(() => ex.handler!.onResponseError?.(ex.controller, err));
    return true;
  }

  /** The connection breaks (or, once the race aborted the copy, undici reports the abort). */
  error(i: number): boolean {
    const ex = this.exchanges[i]!;
    if (!ex.dispatched || ex.over) return false;
    ex.over = true;
    const err = ex.aborted ? new Error('stopped by redundant-proxy') : Object.assign(new Error('socket reset'), { code: 'ECONNRESET' });
    this.call(() => ex.handler!.onResponseError?.(ex.controller, err));
    return true;
  }

  leave(): boolean {
    if (this.res.destroyed || this.res.left) return false;
    this.call(() => this.res.leave());
    return true;
  }

  tick(ms: number): void {
    this.call(() => this.vt.advanceSync(ms));
  }

  /**
   * Lets everything finish as undici would: aborted copies get their error,
   * copies read on get the rest of their answer, timers run. Returns a
   * description of what never finished, or null.
   */
  async quiesce(): Promise<string | null> {
    for (let round = 0; round < 10_000; round++) {
      await flush();
      let moved = false;
      for (let i = 0; i < this.exchanges.length; i++) {
        const ex = this.exchanges[i]!;
        if (!ex.dispatched || ex.over) continue;
        if (ex.aborted) moved = this.error(i) || moved;
        else if (!ex.started) moved = this.requestStart(i) || moved;
        else if (ex.answered && !ex.paused) moved = (this.data(i) || this.end(i)) || moved;
      }
      if (moved || this.drain() || this.hook()) continue;
      if (this.vt.pending > 0) {
        this.call(() => this.vt.step());
        continue;
      }
      break;
    }
    await flush();
    const stuck = this.exchanges.filter((ex) => ex.dispatched && !ex.over);
    if (stuck.length > 0) {
      return stuck
        .map((ex) => `copy ${ex.index + 1} never finished (answered ${ex.answered}, paused ${ex.paused}, aborted ${ex.aborted}, state ${this.race.copies[ex.index]!.state})`)
        .join('; ');
    }
    return this.report ? null : 'the race never reported';
  }
}

/** Lets promise callbacks and queued microtasks run. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 12; i++) await Promise.resolve();
}

const LARGE = Buffer.alloc(70 * 1024, 120);
