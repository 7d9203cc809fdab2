import type { CapturedAnswer } from '../report.js';

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
