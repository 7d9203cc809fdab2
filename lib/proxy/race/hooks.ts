import { validateHeaderName, validateHeaderValue } from 'node:http';
import { codes, RedundantProxyError } from '../../errors.js';
import { PREFIX } from '../../wire/protocol.js';
import type { AdoptedAnswer, OutgoingCopy } from '../options.js';
import { sendError } from '../respond.js';
import type { Copy, CopyRequest } from './copy.js';
import { guard, type RaceCore } from './input.js';

// The gateway's hooks: `rewriteCopy` on each copy as it leaves (before it is
// signed), `rewriteAnswer` on the adopted answer's head before it goes to the
// client. Only called when set: a proxy without hooks builds none of this.
// What a hook gives back is checked here; whatever is wrong with it fails the
// request with `RP_ERR_HOOK_FAILED`, and the hook's error goes to the proxy's
// `error` event. Nothing a hook does can crash the gateway or hang a request.

type Flat = string[];
type HeaderMap = Record<string, string | string[]>;

/**
 * Headers a copy hook may not set: the wire protocol's (signed by the proxy,
 * trusted by the workers), the body's framing (the body is shared by every
 * copy and its length is the body's), and hop-by-hop ones (this hop's, and
 * undici's to manage).
 */
const COPY_REFUSED = new Set(['content-length', 'transfer-encoding', 'connection', 'keep-alive', 'upgrade', 'te', 'trailer', 'expect', 'proxy-connection']);
/** An origin-form target: a path of visible ASCII (anything else percent-encoded). */
const ORIGIN_FORM = /^\/[\x21-\x7e]*$/;

/** A hook's failure: what the `error` event carries (with the cause), and the message of the request's answer. */
function hookError(hook: 'rewriteCopy' | 'rewriteAnswer', what: string, cause?: unknown): RedundantProxyError {
  return new RedundantProxyError(codes.HOOK_FAILED, `${hook} ${what}`, { status: 500, cause });
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** A flat `[name, value, …]` list as a map, repeated names as arrays. */
function toMap(flat: Flat): HeaderMap {
  const out: HeaderMap = {};
  for (let i = 0; i < flat.length; i += 2) {
    const name = flat[i]!;
    const prior = out[name];
    out[name] = prior === undefined ? flat[i + 1]! : ([] as string[]).concat(prior, flat[i + 1]!);
  }
  return out;
}

/** The hook's headers, checked: names lowercased (a later spelling wins), values strings. Throws what is wrong. */
function checkHeaders(hook: 'rewriteCopy' | 'rewriteAnswer', headers: unknown, refuse: (lower: string) => string | null): HeaderMap {
  if (typeof headers !== 'object' || headers === null || Array.isArray(headers)) throw hookError(hook, 'left `headers` not an object of header names');
  const out: HeaderMap = {};
  for (const name of Object.keys(headers)) {
    const value = (headers as Record<string, unknown>)[name];
    if (value === undefined) continue; // deleted by setting it undefined
    const lower = name.toLowerCase();
    const why = refuse(lower);
    if (why) throw hookError(hook, `set the header \`${name}\`: ${why}`);
    const values = Array.isArray(value) ? value : [value];
    try {
      validateHeaderName(name);
      for (const v of values) {
        if (typeof v !== 'string' && typeof v !== 'number') throw new TypeError(`its value must be a string or an array of strings; got ${typeof v}`);
        validateHeaderValue(name, String(v));
      }
    } catch (err) {
      throw hookError(hook, `set the header \`${name}\`, which cannot be sent: ${describe(err)}`, err);
    }
    out[lower] = Array.isArray(value) ? value.map(String) : String(value);
  }
  return out;
}

const refuseOnCopy = (lower: string): string | null =>
  lower.startsWith(PREFIX)
    ? 'x-redundant-* headers are the wire protocol\'s, set and signed by the proxy'
    : COPY_REFUSED.has(lower)
      ? 'the body and its framing are shared by every copy, and hop-by-hop headers are the connection\'s'
      : null;

/**
 * `rewriteCopy` on one copy leaving: returns its target and headers as the
 * hook left them (checked), or the hook's failure. Runs before the copy is
 * signed, so the signature covers the target as sent.
 */
export function rewriteCopy(request: CopyRequest, copy: Copy, of: number, hedged: boolean, target: string, headers: Flat): { target: string; headers: Flat } | RedundantProxyError {
  const { report } = copy;
  const outgoing: OutgoingCopy = {
    requestId: request.requestId,
    copy: { index: report.index, of, duplicateId: report.duplicateId, upstream: copy.upstream.id, hedged },
    req: request.client!,
    method: request.method,
    path: target,
    headers: toMap(headers),
  };
  try {
    const returned = request.rewriteCopy!(outgoing) as unknown;
    if (typeof (returned as PromiseLike<unknown> | null)?.then === 'function') {
      // A copy leaves when its hedge delay says and waits for nothing: what
      // the hook needs from elsewhere (a token) it must have at hand.
      (returned as Promise<unknown>).then(undefined, () => {});
      return hookError('rewriteCopy', 'returned a promise: it must be synchronous (a copy leaves when its hedge delay says, and waits for nothing)');
    }
    const { path } = outgoing;
    if (typeof path !== 'string' || !ORIGIN_FORM.test(path)) return hookError('rewriteCopy', `left the path ${JSON.stringify(path)}, which is not an origin-form target (\`/path?query\`, visible ASCII)`);
    const map = checkHeaders('rewriteCopy', outgoing.headers, refuseOnCopy);
    const flat: Flat = [];
    for (const name in map) {
      const value = map[name]!;
      if (typeof value === 'string') flat.push(name, value);
      else for (const v of value) flat.push(name, v);
    }
    return { target: path, headers: flat };
  } catch (err) {
    return err instanceof RedundantProxyError && err.code === codes.HOOK_FAILED ? err : hookError('rewriteCopy', `threw: ${describe(err)}`, err);
  }
}

/**
 * A hook failed the request: the `error` event gets the hook's error, the
 * client a 500 `RP_ERR_HOOK_FAILED`, or, when an update committed, a 502
 * `RP_ERR_ANSWER_LOST` (it was applied: the client must not retry it blindly).
 */
export function hookFailed(race: RaceCore, hook: 'rewriteCopy' | 'rewriteAnswer', error: RedundantProxyError): void {
  const { input } = race;
  input.observer.error(input.requestId, 'hook', error);
  if (race.finished) return;
  const committed = race.strategy.committed;
  if (!input.res.headersSent) {
    const answer = committed
      ? new RedundantProxyError(codes.ANSWER_LOST, `the update was applied (upstream "${race.winner?.upstream.label ?? 'unknown'}" committed it), but the gateway's ${hook} hook failed on its answer; do not retry it blindly`, { status: 502 })
      : new RedundantProxyError(codes.HOOK_FAILED, `the gateway's ${hook} hook failed`, { status: 500 });
    sendError(input.res, answer, input.requestId);
  }
  race.finish(committed ? 'answer-lost' : 'failed');
}

/**
 * `rewriteAnswer` on the adopted copy's head (`headers`: as the client would
 * get them). `then` writes the head and lets the body flow, with the status
 * and headers as the hook left them; an async hook is waited for with the
 * copy paused, its body kept, within the request's timeout (which answers
 * 504 meanwhile if it comes first).
 */
export function rewriteAnswer(race: RaceCore, copy: Copy, headers: HeaderMap, then: (status: number, headers: HeaderMap) => void, stillWanted: () => boolean): void {
  const { input } = race;
  const hook = input.rewriteAnswer!;
  const { report } = copy;
  const answer: AdoptedAnswer = {
    requestId: input.requestId,
    copy: { index: report.index, of: race.copies.length, duplicateId: report.duplicateId, upstream: copy.upstream.id, hedged: report.hedged },
    req: input.client!,
    status: report.status!,
    headers,
  };
  const go = () => {
    if (!stillWanted()) return;
    let out: HeaderMap;
    try {
      const { status } = answer;
      if (!Number.isInteger(status) || status < 200 || status > 599) throw hookError('rewriteAnswer', `left the status ${String(status)}: a final status is an integer from 200 to 599`);
      out = checkHeaders('rewriteAnswer', answer.headers, () => null);
    } catch (err) {
      return hookFailed(race, 'rewriteAnswer', err as RedundantProxyError);
    }
    then(answer.status, out);
  };
  let returned: unknown;
  try {
    returned = hook(answer);
  } catch (err) {
    return hookFailed(race, 'rewriteAnswer', hookError('rewriteAnswer', `threw: ${describe(err)}`, err));
  }
  if (typeof (returned as PromiseLike<unknown> | null)?.then !== 'function') return go();
  // The body keeps coming while the hook runs: kept, the upstream paused.
  if (copy.state !== 'holding') {
    copy.to('holding');
    copy.pause();
  }
  guard(
    race,
    Promise.resolve(returned).then(go, (err: unknown) => hookFailed(race, 'rewriteAnswer', hookError('rewriteAnswer', `rejected: ${describe(err)}`, err))),
  );
}
