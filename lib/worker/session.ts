import { validateHeaderValue, type ServerResponse } from 'node:http';
import { codes } from '../errors.js';
import { withTimeout } from '../timeout.js';
import { COMMIT, FLAG_OFF, FLAG_ON, H } from '../wire/protocol.js';
import type { Prepared, WorkerContext } from './prepare.js';

// After the handler: the copy's session change saved as its candidate (only
// the adopted copy's becomes the session's state), before its answer ends.

/**
 * Holds the response's end until the session candidate is saved, so the
 * answer never outruns its state, and stamps the commit outcome on it
 * whichever handler (or error handler) ends the response.
 *
 * A head given with `writeHead()` is held too, until the answer ends or its
 * first body byte goes (`write`, `flushHeaders`): Node renders a head the
 * moment `writeHead()` is called, which would leave no room for the
 * session's header on the common `writeHead(…); end(body)` of a node:http
 * handler. A streamed answer's head goes with its first byte, as before.
 *
 * Holding must not change what the handler sees: what Node would refuse at
 * once (a header value with a line break, a status out of range, a chunk
 * that is not text or bytes) is refused at once, in the handler's own call,
 * never later where nobody can catch it; once the handler ended the answer,
 * it reads as sent and ended (`headersSent`, `writableEnded`: other code that
 * checks them leaves it alone, and `writeHead()` throws as Node's would), and
 * later `end()` or `write()` calls are played after it, in order, as Node
 * would have had them.
 */
export function holdEnd(w: WorkerContext, res: ServerResponse, p: Prepared): void {
  const { end, write, writeHead, flushHeaders } = res;
  /** The status and reason of a head held (its headers are set on the response at once). */
  let held: [status: number, reason: string | undefined] | null = null;
  /** The handler ended the answer; it goes once the session is saved. */
  let ending = false;
  const after: Array<() => void> = [];
  /** Puts the real methods back, and gives Node the head that was held, if any. */
  const release = () => {
    res.writeHead = writeHead;
    res.write = write;
    res.flushHeaders = flushHeaders;
    if (held) {
      const [status, reason] = held;
      held = null;
      (writeHead as (status: number, reason?: string) => ServerResponse).call(res, status, ...(reason === undefined ? [] : [reason]));
    }
  };
  res.writeHead = function (this: ServerResponse, status: number, reason?: unknown, headers?: unknown) {
    // Once the handler ended, the head reads as sent: checkedHead refuses it as Node would.
    held = checkedHead(res, status, reason, headers);
    return this;
  } as ServerResponse['writeHead'];
  res.write = function (this: ServerResponse, ...args: unknown[]) {
    if (ending) {
      checkChunk(args[0]);
      after.push(() => (write as (...a: unknown[]) => boolean).apply(res, args));
      return false;
    }
    release();
    return (write as (...a: unknown[]) => boolean).apply(res, args);
  } as ServerResponse['write'];
  res.flushHeaders = function (this: ServerResponse) {
    if (ending) return;
    release();
    flushHeaders.call(res);
  };
  res.end = function (this: ServerResponse, ...args: unknown[]) {
    checkChunk(args[0]);
    if (ending) {
      after.push(() => (end as (...a: unknown[]) => void).apply(res, args));
      return this;
    }
    // The status as it is now: one set after the handler's end is not its
    // answer's. Node renders an implicit head in end() itself (measuring the
    // body: Content-Length), so it is kept as a status, not made a writeHead.
    const implicit = held === null && !res.headersSent ? ([res.statusCode, res.statusMessage] as const) : null;
    // What Node's implicit head would refuse in this very call (a status set out of range, a reason with a line break).
    if (implicit) checkedStatus(implicit[0], implicit[1]);
    ending = true;
    p.gate.mark(res);
    // From here the answer reads as sent and ended, and its head refuses
    // changes, as Node's would (a second res.json() throws in its own call).
    const { setHeader, appendHeader, removeHeader } = res;
    const refused = () => {
      throw headersSent('set');
    };
    const ended = () => true;
    Object.defineProperty(res, 'headersSent', { configurable: true, get: ended });
    Object.defineProperty(res, 'writableEnded', { configurable: true, get: ended });
    res.setHeader = refused;
    res.appendHeader = refused;
    res.removeHeader = refused;
    finishSession(w, p)
      .then((saved) => {
        delete (res as { headersSent?: boolean }).headersSent;
        delete (res as { writableEnded?: boolean }).writableEnded;
        res.setHeader = setHeader;
        res.appendHeader = appendHeader;
        res.removeHeader = removeHeader;
        res.end = end;
        if (implicit) [res.statusCode, res.statusMessage] = implicit;
        p.gate.mark(res);
        // Said either way while the head can still take it: `0` tells the proxy
        // there is nothing to promote (a streamed head says neither).
        if (!res.headersSent && p.handle.session.id) res.setHeader(H.sessionChanged, saved ? FLAG_ON : FLAG_OFF);
        release();
        (end as (...a: unknown[]) => void).apply(res, args);
        for (const call of after.splice(0)) call();
      })
      // Checked when the handler called: nothing left to throw here but a
      // response Node itself gave up on. Its connection goes; the process stays.
      .catch(() => res.destroy());
    return this;
  } as ServerResponse['end'];
}

/**
 * What Node's `writeHead()` checks and does at once, without rendering the
 * head: the status (100 to 999) and reason are checked, the headers set on
 * the response as Node sets them (an object's names replace, an array's
 * pairs replace and then add: duplicates stay), each checked by `setHeader`.
 */
function checkedHead(res: ServerResponse, statusCode: number, reason: unknown, headers: unknown): [number, string | undefined] {
  if (res.headersSent) throw headersSent('render');
  const message = typeof reason === 'string' ? reason : undefined;
  if (typeof reason !== 'string') headers ??= reason;
  const status = checkedStatus(statusCode, message);
  if (Array.isArray(headers)) {
    if (headers.length % 2 !== 0) throw Object.assign(new TypeError('The argument \'headers\' is invalid: an array of headers needs an even length'), { code: 'ERR_INVALID_ARG_VALUE' });
    for (let i = 0; i < headers.length; i += 2) validateHeaderValue(String(headers[i]), headers[i + 1]);
    for (let i = 0; i < headers.length; i += 2) if (headers[i]) res.removeHeader(String(headers[i]));
    for (let i = 0; i < headers.length; i += 2) if (headers[i]) res.appendHeader(String(headers[i]), headers[i + 1] as string);
  } else if (headers !== null && typeof headers === 'object') {
    for (const [name, value] of Object.entries(headers)) if (name) res.setHeader(name, value as string);
  }
  res.statusCode = status;
  if (message !== undefined) res.statusMessage = message;
  return [status, message];
}

/** A head's status (100 to 999) and reason, checked as Node checks them. */
function checkedStatus(statusCode: number, reason: string | undefined): number {
  const status = statusCode | 0;
  if (status < 100 || status > 999) throw Object.assign(new RangeError(`Invalid status code: ${String(statusCode)}`), { code: 'ERR_HTTP_INVALID_STATUS_CODE' });
  if (reason !== undefined) validateHeaderValue('statusMessage', reason);
  return status;
}

/** Node's refusal of a head, or a header, once the head is sent. */
function headersSent(what: 'set' | 'render'): Error {
  return Object.assign(new Error(`Cannot ${what} headers after they are sent to the client`), { code: 'ERR_HTTP_HEADERS_SENT' });
}

/** What Node's `end()` and `write()` refuse at once: a chunk that is neither text nor bytes. */
function checkChunk(chunk: unknown): void {
  if (!chunk || typeof chunk === 'function' || typeof chunk === 'string' || chunk instanceof Uint8Array) return;
  throw Object.assign(new TypeError(`The "chunk" argument must be of type string or an instance of Buffer or Uint8Array. Received ${typeof chunk}`), { code: 'ERR_INVALID_ARG_TYPE' });
}

/**
 * Saves the copy's session candidate, if it has one worth keeping. In an
 * update, a session change is arbitrated like a commit: a copy that did
 * not commit through `commitOnce` claims and confirms the request for its
 * session change, so exactly one copy's change wins and the proxy can adopt
 * that copy's answer at once (`x-redundant-commit: won`) instead of
 * waiting for every copy; the others answer `lost` and save nothing.
 */
async function finishSession(w: WorkerContext, p: Prepared): Promise<boolean> {
  // A copy that lost the commit has no session state worth keeping.
  if (p.gate.outcome === COMMIT.lost) return false;
  const data = sessionToSave(w, p);
  if (data === undefined) return false;
  // A session change counts only from a copy whose body is the signed one
  // (a read's too: it is saved without a claim).
  if (p.body) {
    try {
      await p.body.verified();
    } catch {
      return false;
    }
  }
  const { handle, gate } = p;
  if (handle.update && !handle.direct && gate.outcome === undefined) {
    try {
      const claim = await gate.claim();
      await claim.confirm();
    } catch (err) {
      // Lost (the gate marks it), stopped, or the store is down: without
      // the arbitration the change must not become the session's state.
      if (gate.outcome !== COMMIT.lost && !handle.signal.aborted) w.report(handle.requestId, 'saveCandidate', err);
      return false;
    }
  }
  return saveSession(w, p, data);
}

/**
 * The session data to save as this copy's candidate: what the handler left
 * in it, when that differs from what was loaded; else undefined.
 */
function sessionToSave(w: WorkerContext, p: Prepared): Record<string, unknown> | undefined {
  const { handle, sessionBefore } = p;
  // A stopped copy's answer never reaches the proxy, so its candidate could never be adopted.
  if (sessionBefore === undefined || !handle.session.id || handle.signal.aborted) return undefined;
  let after: string;
  try {
    const data = handle.session.data;
    if (typeof data !== 'object' || data === null || Array.isArray(data)) throw new TypeError('session.data must be a plain object');
    after = JSON.stringify(data);
  } catch (err) {
    w.report(handle.requestId, 'saveCandidate', err);
    return undefined;
  }
  return after === sessionBefore ? undefined : (JSON.parse(after) as Record<string, unknown>);
}

/**
 * Saves this copy's session candidate. Resolves true when it was saved (the
 * response then says so, and the proxy records the adoption before
 * answering: read-your-writes).
 */
async function saveSession(w: WorkerContext, p: Prepared, data: Record<string, unknown>): Promise<boolean> {
  const { handle } = p;
  // A replayed copy must not overwrite the real copy's candidate. A read's
  // record may be held back to batch it (a store's batch delay): this answer
  // waits for it, so it goes now.
  // A store's flushRecords may throw or reject: reported, never unhandled.
  void Promise.resolve()
    .then(() => w.store.flushRecords?.())
    .catch((err: unknown) => w.report(handle.requestId, 'recordCopy', err));
  if ((await p.recorded) === true) {
    w.events.emit('refused', { code: codes.REPLAYED_COPY, reason: 'a replayed read tried to save a session candidate' });
    return false;
  }
  try {
    await withTimeout(w.store.saveCandidate(handle.session.id, handle.requestId, handle.duplicateId, data), w.storeTimeout, 'saveCandidate');
    return true;
  } catch (err) {
    w.report(handle.requestId, 'saveCandidate', err);
    return false;
  }
}
