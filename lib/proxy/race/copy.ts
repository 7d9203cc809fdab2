import type { Dispatcher } from 'undici';
import { transition, type CopyState } from '../lifecycle.js';
import type { Upstream } from '../options.js';
import type { CopyReport } from '../report.js';

// One copy of a request, as undici's dispatch handler: the seam between the
// race and the wire. It turns undici's callbacks into the race's events
// according to where the copy stands (its lifecycle, lib/proxy/lifecycle.ts),
// and moves only through `to()`. What an event means for the race (adopt,
// hold, drain, stop) the race decides.

type Headers = Record<string, string | string[] | undefined>;

/** An unacceptable answer is kept (up to this size) to be passed through when no copy produced an acceptable one. */
export const FALLBACK_LIMIT = 1024 * 1024;

/** The race, as its copies see it. */
export interface CopyHost {
  /** The copy's final head (not a 1xx), while it was sent or lingering. */
  head(copy: Copy, status: number, headers: Headers): void;
  /** A chunk of the adopted answer's body, going to the client. */
  stream(controller: Dispatcher.DispatchController, chunk: Buffer): void;
  /** A chunk of an answer read whole to be compared; the copy counted it. */
  reading(copy: Copy): void;
  /** The body of an answer being compared is complete. */
  answered(copy: Copy): void;
  /** The adopted answer's body is complete. */
  winnerEnded(): void;
  /** The body of an unacceptable answer is complete (it may be passed through). */
  rejectedEnded(copy: Copy): void;
  /** The copy failed before it was adopted (its connection, or its error answer was too large). */
  failed(copy: Copy, error: string): void;
  /** A loser given a grace failed within it. */
  lingerFailed(copy: Copy): void;
  /** A held answer broke before it went to the client. */
  heldBroken(copy: Copy, error: string): void;
  /** The adopted answer's body broke after its head went out. */
  winnerBroken(): void;
  /** The exchange with the upstream is over (for the count of copies in flight). */
  wireEnded(copy: Copy): void;
}

export class Copy implements Dispatcher.DispatchHandler {
  #state: CopyState = 'idle';
  controller: Dispatcher.DispatchController | null = null;
  /** Set when the race wants this copy stopped before undici handed us a controller. */
  abortWanted = false;
  /** Dispatched and not ended yet. */
  live = false;
  startedAt = 0;
  chunks: Buffer[] = [];
  size = 0;
  headers: Headers = {};
  /** While holding: the body ended, or broke, before the head could be sent. */
  ended = false;
  broken = false;
  /** Under select: its answer was too large to buffer and compare. */
  tooLarge = false;
  /** Under select: when its head or the last chunk of its body came (clock ms). */
  lastDataAt = 0;

  constructor(
    readonly host: CopyHost,
    readonly upstream: Upstream,
    readonly report: CopyReport,
  ) {}

  get state(): CopyState {
    return this.#state;
  }

  /** Moves the copy, through the table of legal moves (lib/proxy/lifecycle.ts). */
  to(next: CopyState): void {
    this.#state = transition(this.#state, next);
  }

  /** Ends the copy's exchange: closes its connection (now, or as soon as undici hands over the controller). */
  abort(): void {
    this.to('done');
    if (this.controller) this.controller.abort(new Error('stopped by redundant-proxy'));
    else this.abortWanted = true;
  }

  /**
   * Lets a paused answer's body flow again. Never at once: adoption runs
   * inside another copy's undici callback (its head arrived), that is inside
   * that connection's llhttp parser, and undici asserts that no parser is
   * running when one is resumed (`currentParser === null`). A microtask runs
   * after the socket's data handler has returned, outside every parser.
   */
  resume(): void {
    queueMicrotask(() => {
      if (this.#state === 'streaming' || this.#state === 'draining') this.controller?.resume();
    });
  }

  pause(): void {
    this.controller?.pause();
  }

  /** The exchange with the upstream is over (undici ends every dispatched request with one of its two last callbacks). */
  wireDone(): void {
    if (!this.live) return;
    this.live = false;
    this.host.wireEnded(this);
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.abortWanted) controller.abort(new Error('stopped by redundant-proxy'));
  }

  onResponseStart(controller: Dispatcher.DispatchController, status: number, headers: Headers): void {
    // An interim answer (103 Early Hints, 102 Processing) is not an answer:
    // it is dropped, and the copy races on with its final one.
    if (status < 200) return;
    if (this.#state !== 'sent' && this.#state !== 'lingering') return;
    this.controller = controller;
    this.headers = headers;
    this.host.head(this, status, headers);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    switch (this.#state) {
      case 'streaming':
        this.host.stream(controller, chunk);
        break;
      case 'holding':
        this.chunks.push(chunk);
        break;
      case 'buffering':
        this.size += chunk.length;
        this.chunks.push(chunk);
        this.host.reading(this);
        break;
      case 'collecting':
        this.size += chunk.length;
        if (this.size > FALLBACK_LIMIT) {
          this.chunks = [];
          this.abort();
          this.host.failed(this, 'error response too large to pass through');
        } else this.chunks.push(chunk);
        break;
      default:
    }
  }

  onResponseEnd(): void {
    this.wireDone();
    const state = this.#state;
    if (state === 'holding') {
      this.ended = true;
      return;
    }
    if (state === 'buffering') {
      this.to('holding');
      this.ended = true;
      this.host.answered(this);
      return;
    }
    this.to('done');
    if (state === 'streaming') this.host.winnerEnded();
    else if (state === 'collecting') this.host.rejectedEnded(this);
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    this.wireDone();
    const state = this.#state;
    this.to('done');
    const error = errorName(err);
    switch (state) {
      case 'lingering':
        this.report.outcome = 'failed';
        this.report.error = error;
        this.host.lingerFailed(this);
        break;
      case 'holding':
        this.broken = true;
        this.host.heldBroken(this, error);
        break;
      case 'streaming':
        this.report.error = error; // its body broke after the head went out
        this.host.winnerBroken();
        break;
      case 'sent':
      case 'collecting':
      case 'buffering':
        this.chunks = [];
        this.host.failed(this, error);
        break;
      default:
    }
  }
}

export function errorName(err: unknown): string {
  const e = err as { code?: string; message?: string };
  return e?.code ?? e?.message ?? String(err);
}
