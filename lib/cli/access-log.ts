import { AsyncLocalStorage } from 'node:async_hooks';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { RaceStartEvent, RedundantProxy } from '../proxy/proxy.js';
import type { RaceReport } from '../proxy/report.js';

// One JSON line per request, written when both halves are known: the
// response has closed (its duration, as the client saw it), and, for a
// request that was raced, the race has ended (which upstream served it, how
// many copies left). A race ends after its response, once its losers are
// stopped, so a line may come a little after the answer. A request the
// gateway answered itself (a 413, a replayed Idempotency-Key, the 503 of a
// closing gateway) has no race: its line is written when its response closes.

export interface AccessLogLine {
  /** ISO time the request arrived. */
  time: string;
  /** The id the proxy minted (`x-request-id`), or null when it answered before minting one. */
  requestId: string | null;
  method: string;
  path: string;
  /** Status sent to the client, or null when none was (the client left first). */
  status: number | null;
  /** Id of the upstream whose answer was adopted. */
  servedBy: string | null;
  /** Copies sent to upstreams (copies held back by hedging and never sent are not counted). */
  copies: number;
  /** Milliseconds from the request's arrival to its response's end. */
  durationMs: number;
  /** The race's outcome (`won`, `failed`, `timeout`, …), or `replayed` / `refused` for a request answered without a race, or `cut-off` for one still in flight when the gateway stopped. */
  outcome: string;
}

interface Pending {
  time: string;
  method: string;
  path: string;
  /** Set when a race starts for the request. */
  requestId?: string;
  /** The response head as the proxy wrote it (for a request answered without a race). */
  headers?: Record<string, unknown>;
  durationMs?: number;
  status?: number | null;
  report?: RaceReport;
  /** When the response closed, to give up on a race:end that never comes. */
  closedAt?: number;
  /** Copies sent so far (`copy:sent`), for a line written before its race reported. */
  copiesSent: number;
  /** When the request arrived (monotonic), for a line written before its response closed. */
  start: number;
  /** The status sent so far, or null (for a line written before its response closed). */
  sent: () => number | null;
}

export interface AccessLogOptions {
  write(line: string): void;
  /** Monotonic milliseconds. @default performance.now */
  now?: () => number;
  /** Wall clock, for `time`. @default Date.now */
  wallClock?: () => number;
  /** A raced request whose race has not reported this long after its response closed is logged with what is known. @default 60000 */
  maxWait?: number;
}

export class AccessLog {
  readonly #write: (line: string) => void;
  readonly #now: () => number;
  readonly #wall: () => number;
  readonly #maxWait: number;
  /**
   * The request being handled: `race:start` is emitted inside the request's
   * own async context, which is how a race is tied to its request (the race
   * mints the request id; the request does not carry it in).
   */
  readonly #current = new AsyncLocalStorage<Pending>();
  /** Raced requests by request id, until their line is written. */
  readonly #raced = new Map<string, Pending>();
  /** Requests whose response has not closed yet: written by `close()` if it never does (cut off at shutdown). */
  readonly #open = new Set<Pending>();
  readonly #detach: Array<{ dispose(): void }>;

  constructor(proxy: RedundantProxy, options: AccessLogOptions) {
    this.#write = options.write;
    this.#now = options.now ?? (() => performance.now());
    this.#wall = options.wallClock ?? Date.now;
    this.#maxWait = options.maxWait ?? 60_000;
    this.#detach = [
      proxy.on('race:start', (e) => this.#started(e)),
      proxy.on('copy:sent', (e) => {
        const p = this.#raced.get(e.requestId);
        if (p) p.copiesSent++;
      }),
      proxy.on('race:end', (r) => this.#ended(r)),
    ];
  }

  /** Runs `handle` (the proxy's handler) for a request, logging it. */
  handle(req: IncomingMessage, res: ServerResponse, handle: () => void): void {
    const start = this.#now();
    const p: Pending = { time: new Date(this.#wall()).toISOString(), method: req.method ?? '', path: req.url ?? '', copiesSent: 0, start, sent: () => (res.headersSent ? res.statusCode : null) };
    this.#open.add(p);
    // The proxy writes its head in one writeHead call (nothing in getHeader):
    // keep what it wrote, for the request id and replay mark of an answer without a race.
    const writeHead = res.writeHead;
    res.writeHead = function (this: ServerResponse, ...args: unknown[]) {
      const headers = args.find((a, i) => i > 0 && typeof a === 'object' && a !== null && !Array.isArray(a));
      if (headers) p.headers = headers as Record<string, unknown>;
      return (writeHead as (...a: unknown[]) => ServerResponse).apply(this, args);
    } as ServerResponse['writeHead'];
    res.once('close', () => {
      if (!this.#open.delete(p)) return; // already written by close()
      p.durationMs = round(this.#now() - start);
      p.status = res.headersSent ? res.statusCode : null;
      p.closedAt = this.#now();
      if (p.requestId === undefined) {
        const header = (name: string) => p.headers?.[name] ?? res.getHeader(name);
        const id = header('x-request-id');
        this.#emit({
          time: p.time,
          requestId: typeof id === 'string' ? id : null,
          method: p.method,
          path: p.path,
          status: p.status,
          servedBy: null,
          copies: 0,
          durationMs: p.durationMs,
          outcome: String(header('idempotent-replayed')) === 'true' ? 'replayed' : 'refused',
        });
      } else if (p.report) this.#flush(p);
      else this.#sweep();
    });
    this.#current.run(p, handle);
  }

  /** Writes every line still waiting for its race (at shutdown). */
  flush(): void {
    for (const p of this.#raced.values()) if (p.durationMs !== undefined) this.#flush(p);
  }

  /**
   * Writes every line still owed, and stops listening: a request whose
   * response has not closed (the gateway is cutting it off) is written with
   * the status sent so far (null: none) and outcome `cut-off`.
   */
  close(): void {
    for (const p of this.#open) {
      this.#open.delete(p);
      p.durationMs = round(this.#now() - p.start);
      p.status = p.sent();
      if (p.requestId !== undefined) this.#raced.delete(p.requestId);
      this.#emit({
        time: p.time,
        requestId: p.requestId ?? null,
        method: p.method,
        path: p.path,
        status: p.status,
        servedBy: p.report?.servedBy ?? null,
        copies: p.report ? p.report.copies.filter((c) => c.sentAt !== null).length : p.copiesSent,
        durationMs: p.durationMs,
        outcome: 'cut-off',
      });
    }
    this.flush();
    for (const d of this.#detach) d.dispose();
  }

  #started(e: RaceStartEvent): void {
    const p = this.#current.getStore();
    if (!p) return;
    p.requestId = e.requestId;
    p.path = e.path;
    this.#raced.set(e.requestId, p);
  }

  #ended(report: RaceReport): void {
    const p = this.#raced.get(report.requestId);
    if (!p) return;
    p.report = report;
    if (p.durationMs !== undefined) this.#flush(p);
  }

  #flush(p: Pending): void {
    this.#raced.delete(p.requestId!);
    const r = p.report;
    this.#emit({
      time: p.time,
      requestId: p.requestId!,
      method: p.method,
      path: p.path,
      status: r?.status ?? p.status ?? null,
      servedBy: r?.servedBy ?? null,
      copies: r ? r.copies.filter((c) => c.sentAt !== null).length : 0,
      durationMs: p.durationMs!,
      outcome: r?.outcome ?? 'unreported',
    });
  }

  /** Lines whose race never reported (it cannot, unless the proxy failed inside): written after `maxWait`. */
  #sweep(): void {
    const now = this.#now();
    for (const p of this.#raced.values()) if (p.closedAt !== undefined && p.report === undefined && now - p.closedAt > this.#maxWait) this.#flush(p);
  }

  #emit(line: AccessLogLine): void {
    this.#write(`${JSON.stringify(line)}\n`);
  }
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
