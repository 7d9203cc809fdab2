import type { ServerResponse } from 'node:http';
import { codes, RedundantProxyError } from '../../errors.js';
import { H } from '../../wire/protocol.js';
import { forwardResponseHeaders } from '../headers.js';
import { sendError } from '../respond.js';
import type { Copy } from './copy.js';

// What the race writes to its client: the adopted answer's head, an
// upstream's error answer passed through, the race's own error answers, and
// (for an Idempotency-Key) the adopted answer kept whole, its last bytes held
// back until the key is completed.

type Extra = Record<string, string | string[]> | undefined;

/** The adopted answer, as sent to the client, when `capture` asked for it. */
export interface CapturedAnswer {
  status: number;
  headers: Record<string, string | string[]>;
  /** null when the body was larger than `capture`. */
  body: Buffer | null;
}

/** A HEAD answer, a 204 or a 304: a head and no body, whatever its framing headers say. */
export function isBodyless(method: string, status: number | null): boolean {
  return method === 'HEAD' || status === 204 || status === 304;
}

/** Writes the adopted copy's head, with `extra` headers added; returns the headers written. */
export function writeHead(res: ServerResponse, copy: Copy, requestId: string, extra: Extra): Record<string, string | string[]> | null {
  if (res.destroyed) return null;
  const status = copy.report.status!;
  const out = forwardResponseHeaders(copy.headers);
  if (status === 204 || status === 304) {
    // No body follows: a length would only mislead the client's parser.
    delete out['content-length'];
    delete out['transfer-encoding'];
  }
  if (extra) {
    for (const name in extra) {
      const prior = out[name];
      // Set-Cookie and other list headers: add to the upstream's values.
      out[name] = prior === undefined ? extra[name]! : ([] as string[]).concat(prior, extra[name]!);
    }
  }
  out['x-request-id'] = requestId;
  out[H.servedBy] = copy.upstream.label;
  res.writeHead(status, out);
  return out;
}

/** Passes an upstream's own error answer through, whole, when no copy answered acceptably. */
export function passThrough(res: ServerResponse, fallback: Copy, requestId: string): void {
  const out = forwardResponseHeaders(fallback.headers);
  out['x-request-id'] = requestId;
  out[H.servedBy] = fallback.upstream.label;
  const body = Buffer.concat(fallback.chunks, fallback.size);
  out['content-length'] = String(body.length);
  res.writeHead(fallback.report.status!, out);
  res.end(body);
  fallback.chunks = [];
}

/** No copy gave a usable answer: 502, saying how many failed and how many were too large to compare. */
export function answerNoUsable(res: ServerResponse, copies: readonly Copy[], requestId: string, maxAnswerSize: number): void {
  let failed = 0;
  let tooLarge = 0;
  for (const c of copies) {
    if (c.report.sentAt === null) continue;
    if (c.tooLarge) tooLarge++;
    else failed++;
  }
  const message =
    tooLarge === 0
      ? `no upstream answered (${failed} copies failed)`
      : `no usable answer: ${tooLarge} too large for select to compare (maxBodySize ${maxAnswerSize} bytes), ${failed} failed`;
  sendError(res, new RedundantProxyError(codes.UPSTREAMS_FAILED, message, { status: 502 }), requestId);
}

/**
 * The adopted answer's tail, for an Idempotency-Key: its body kept (up to
 * `capture` bytes) to replay, and, when `holdLast`, its last chunk held back
 * until the key is completed: with it the client has the whole answer (a
 * Content-Length body is complete at its last byte, before `end()`).
 */
export class AnswerTail {
  captured: CapturedAnswer | null = null;
  #kept: Buffer[] | null = [];
  #size = 0;
  #last: Buffer | null = null;

  constructor(
    readonly capture: number,
    readonly holdLast: boolean,
  ) {}

  /** The head went out with these headers. */
  head(status: number, headers: Record<string, string | string[]>): void {
    if (this.capture > 0) this.captured = { status, headers: { ...headers }, body: null };
  }

  /** A chunk of the adopted body: returns what to write now. */
  pass(chunk: Buffer): Buffer | null {
    if (this.captured) {
      this.#size += chunk.length;
      if (this.#size > this.capture) this.#kept = null;
      else this.#kept?.push(chunk);
    }
    if (!this.holdLast) return chunk;
    const previous = this.#last;
    this.#last = chunk;
    return previous;
  }

  /** The body is complete: the answer as kept. */
  complete(): CapturedAnswer | null {
    if (this.captured && this.#kept) this.captured.body = Buffer.concat(this.#kept, this.#size);
    return this.captured;
  }

  /** The chunk held back, once. */
  takeLast(): Buffer | null {
    const last = this.#last;
    this.#last = null;
    return last;
  }
}
