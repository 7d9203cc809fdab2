import type { ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { codes, RedundantProxyError } from '../../errors.js';
import { CLIENT_HEADERS, H } from '../../wire/protocol.js';
import { forwardResponseHeaders } from '../headers.js';
import { sendError } from '../respond.js';
import type { Copy } from './copy.js';
import { rewriteAnswer } from './hooks.js';
import { guard, type RaceCore } from './input.js';

// What the race writes to its client: the adopted answer's head, an
// upstream's error answer passed through, the race's own error answers, and
// (for an Idempotency-Key) the adopted answer kept whole, its last bytes held
// back until the key is completed.

type Extra = Record<string, string | string[]> | undefined;

/** A HEAD answer, a 204 or a 304: a head and no body, whatever its framing headers say. */
export function isBodyless(method: string, status: number | null): boolean {
  return method === 'HEAD' || status === 204 || status === 304;
}

/** The adopted copy's head as the client gets it: the upstream's headers that pass, with `extra` headers added. */
function answerHeaders(copy: Copy, extra: Extra): Record<string, string | string[]> {
  const out = forwardResponseHeaders(copy.headers);
  if (extra) {
    for (const name in extra) {
      const prior = out[name];
      // Set-Cookie and other list headers: add to the upstream's values.
      out[name] = prior === undefined ? extra[name]! : ([] as string[]).concat(prior, extra[name]!);
    }
  }
  return out;
}

/** Writes the adopted answer's head; returns the headers written. */
export function writeHead(res: ServerResponse, copy: Copy, requestId: string, status: number, out: Record<string, string | string[]>): Record<string, string | string[]> | null {
  if (res.destroyed) return null;
  if (status === 204 || status === 304) {
    // No body follows: a length would only mislead the client's parser.
    delete out['content-length'];
    delete out['transfer-encoding'];
  }
  out[CLIENT_HEADERS.requestId] = requestId;
  out[H.servedBy] = copy.upstream.label;
  res.writeHead(status, out);
  return out;
}

/** Whether the adopted copy may still go out; answers 502 for one whose body broke while it was held. */
function stillWanted(race: RaceCore, copy: Copy): boolean {
  if (race.finished) return false; // timed out or the client left while holding
  if (copy.broken) {
    copy.chunks = [];
    sendError(race.input.res, new RedundantProxyError(codes.UPSTREAMS_FAILED, 'the adopted answer broke before it could be sent', { status: 502 }), race.input.requestId);
    race.finish('failed');
    return false;
  }
  // Stopped while its head waited: the timeout came and asks the store; it answers.
  return copy.state !== 'done';
}

/** The adopted copy may go: its head (through the `rewriteAnswer` hook, when set), and whatever body arrived while it was held. */
export function release(race: RaceCore, copy: Copy, extra: Extra): void {
  if (!stillWanted(race, copy)) return;
  const out = answerHeaders(copy, extra);
  if (race.input.rewriteAnswer !== undefined) {
    return rewriteAnswer(race, copy, out, (status, headers) => flow(race, copy, status, headers), () => stillWanted(race, copy));
  }
  flow(race, copy, copy.report.status!, out);
}

/** The adopted answer's head goes out with `status` and `out`, then its body flows. */
function flow(race: RaceCore, copy: Copy, status: number, out: Record<string, string | string[]>): void {
  const { tail } = race;
  const written = writeHead(race.input.res, copy, race.input.requestId, status, out);
  if (written) tail?.head(status, written);
  if (isBodyless(race.input.method, status)) {
    // Nothing follows the head, whatever its framing headers say: a 304
    // may state the length of the body it does not carry (undici then
    // reports a length mismatch on the connection, which is no concern of
    // the client's). The answer is complete now.
    copy.chunks = [];
    if (copy.ended) copy.to('done');
    else {
      copy.to('draining');
      copy.resume();
    }
    return winnerEnded(race);
  }
  const { res } = race.input;
  for (const chunk of copy.chunks) {
    const piece = tail ? tail.pass(chunk) : chunk;
    if (piece) res.write(piece);
  }
  copy.chunks = [];
  if (copy.ended) {
    copy.to('done');
    return winnerEnded(race);
  }
  copy.to('streaming');
  copy.resume();
}

/** A chunk of the adopted body, to the client; the upstream waits while the client's socket is full. */
export function stream(race: RaceCore, controller: Dispatcher.DispatchController, chunk: Buffer): void {
  const { res } = race.input;
  const out = race.tail ? race.tail.pass(chunk) : chunk;
  if (out && !res.write(out)) {
    controller.pause();
    res.once('drain', () => controller.resume());
  }
}

/** The adopted body is complete: end the answer (after `beforeEnd`, with its last chunk). */
export function winnerEnded(race: RaceCore): void {
  const { tail } = race;
  const captured = tail?.complete() ?? null;
  const end = () => {
    if (race.finished) return; // the client left meanwhile
    const { res } = race.input;
    const last = tail?.takeLast();
    if (last) res.write(last);
    res.end();
    race.finish('won');
  };
  if (!race.input.beforeEnd) return end();
  race.ending = true;
  guard(race, race.input.beforeEnd(captured).then(end, end));
}

/** Passes an upstream's own error answer through, whole, when no copy answered acceptably. */
export function passThrough(res: ServerResponse, fallback: Copy, requestId: string, method: string): void {
  const out = forwardResponseHeaders(fallback.headers);
  out[CLIENT_HEADERS.requestId] = requestId;
  out[H.servedBy] = fallback.upstream.label;
  const status = fallback.report.status!;
  if (isBodyless(method, status)) {
    // Its framing headers as they came: a HEAD's or a 304's length is of a
    // body it does not carry. A 204 has none (RFC 9110 §8.6).
    if (status === 204) delete out['content-length'];
    res.writeHead(status, out);
    res.end();
  } else {
    const body = Buffer.concat(fallback.chunks, fallback.size);
    out['content-length'] = String(body.length);
    res.writeHead(status, out);
    res.end(body);
  }
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
