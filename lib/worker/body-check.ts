import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { codes, RedundantProxyError } from '../errors.js';

// A signed copy's body, checked against the hash in its signature as it
// streams in to the application.

/**
 * Milliseconds a claim (or a session change) waits for a signed copy's body
 * to arrive in full. The proxy sends the whole body at once, so a legitimate
 * copy's body is in well before this; the bound keeps a sender that stalls
 * its body from holding a handler (and its transaction) in `claim()`.
 */
const BODY_WAIT_MS = 5000;

/** The check of a signed copy's body against the hash in its signature. */
export interface BodyCheck {
  /** The refusal, once the body ended and did not match (the request was destroyed with it). */
  readonly failed: RedundantProxyError | undefined;
  /**
   * Resolves once the whole body arrived and matched. Rejects with the
   * refusal when it did not match or did not arrive in full within
   * `BODY_WAIT_MS`, or with the signal's reason when the copy was stopped.
   */
  verified(): Promise<void>;
}

/**
 * Binds a signed copy to its body, which the worker cannot check before the
 * handler runs without buffering it. Instead, every chunk is hashed on its
 * way into the request stream: `IncomingMessage` is a Readable that the HTTP
 * parser feeds through `push(chunk)`, and `push(null)` at the end. The end is
 * only let through when the hash matches the signed one; otherwise the
 * request is destroyed with the refusal, so that a body parser (or a
 * `for await` over the request) fails and the handler never sees a complete
 * forged body. A handler may ignore the body: the commit gate waits for
 * `verified()` before any claim, so a forged body can never commit, whoever
 * reads it. Nothing is read on the application's behalf: a body the handler
 * leaves unread past the stream's buffer (16 KiB) never ends, and its claim
 * is refused after `BODY_WAIT_MS` (read the body before committing).
 *
 * Data that reached the stream before the worker ran (a middleware before it
 * awaited something) is taken out with `read()`, hashed and put back with
 * `unshift()`, unseen by anyone (and the rest drained if left unread, as
 * node:http does for an untouched request). Data already handed to someone
 * else (a body parser mounted before the worker) cannot be checked: the copy
 * is refused, and so is one whose buffered data is already flowing or decoded.
 *
 * Returns the check, or the refusal when the body cannot be checked.
 */
export function checkBody(req: IncomingMessage, res: ServerResponse, expected: string, signal: AbortSignal, refuse: (reason: string, code?: typeof codes.BODY_CONSUMED) => RedundantProxyError): BodyCheck | RedundantProxyError {
  const buffered = req.readableLength;
  if (req.readableDidRead || (buffered > 0 && (req.readableFlowing === true || req.readableEncoding !== null))) {
    // Its own code: the proxy then says what to fix (not a secret or an id).
    return refuse('its body was read before the worker could check it against the signature (mount the worker before any body parser)', codes.BODY_CONSUMED);
  }
  const hash = createHash('sha256');
  let failed: RedundantProxyError | undefined;
  /** Why claims are refused although the copy is no forgery: its body was discarded unchecked. */
  let unchecked: RedundantProxyError | undefined;
  let ended = false;
  const waiters = new Set<() => void>();
  const push = req.push;
  /** The body ended: true when it is the signed one; else the request is destroyed. */
  const end = (): boolean => {
    req.push = push;
    ended = true;
    if (hash.digest('base64url') !== expected) {
      // Once the answer is done, node:http discards a body nobody read: the
      // parser stops pushing it (IncomingMessage#_dumped, set by _dump(),
      // internal but stable since node 0.x). Then the hash lacks the rest,
      // and nobody saw it either: no forgery to report, no connection to
      // close; only a later claim is refused, as nothing was checked.
      if ((req as { _dumped?: boolean })._dumped === true) {
        unchecked = new RedundantProxyError(codes.BAD_SIGNATURE, 'copy refused: its body was discarded unread, so it was not checked against its signature', { status: 401 });
      } else {
        failed = refuse('its body does not match its signature');
        req.destroy(failed);
      }
    }
    for (const wake of waiters) wake();
    waiters.clear();
    return failed === undefined;
  };
  req.push = function (this: IncomingMessage, chunk: unknown, encoding?: BufferEncoding): boolean {
    if (chunk === null) return end() && push.call(this, null);
    if (typeof chunk === 'string') hash.update(chunk, encoding ?? 'utf8');
    else hash.update(chunk as Uint8Array);
    return push.call(this, chunk, encoding);
  };
  if (buffered > 0) {
    // Paused and unread: read() hands back all of it at once, and unshift() returns it unseen.
    const head = req.read() as Buffer;
    hash.update(head);
    if (req.complete && !end()) return failed!;
    req.unshift(head);
    // Having read, the request counts as consumed: node:http no longer drains
    // a body the handler left unread when the answer is done, and the next
    // request on the connection would wait behind it. Drain it as node would.
    if (!req.complete) {
      res.once('finish', () => {
        if (!req.readableEnded && req.readableFlowing !== true && req.listenerCount('data') === 0 && req.listenerCount('readable') === 0) req.resume();
      });
    }
  } else if (req.complete) {
    // The whole (empty) body was in before the worker ran.
    end();
    if (failed) return failed;
  }
  return {
    get failed() {
      return failed;
    },
    verified(): Promise<void> {
      if (ended) return failed || unchecked ? Promise.reject(failed ?? unchecked) : Promise.resolve();
      if (signal.aborted) return Promise.reject(signal.reason);
      return new Promise((resolve, reject) => {
        const settle = (err?: unknown) => {
          clearTimeout(timer);
          signal.removeEventListener('abort', onAbort);
          waiters.delete(wake);
          if (err === undefined) resolve();
          else reject(err);
        };
        const wake = () => settle(failed ?? unchecked);
        const onAbort = () => settle(signal.reason);
        const timer = setTimeout(() => settle(refuse(`its body did not arrive in full within ${BODY_WAIT_MS} ms, so it cannot be checked against its signature`)), BODY_WAIT_MS);
        waiters.add(wake);
        signal.addEventListener('abort', onAbort, { once: true });
      });
    },
  };
}
