import type { IncomingMessage } from 'node:http';
import type { Scheduler } from '../time.js';
import { withTimeout } from '../timeout.js';
import { mintSessionId, SESSION_ID } from '../wire/protocol.js';
import type { ResolvedOptions } from './options.js';
import { isSignedSessionId, mintSignedSessionId } from './session.js';

// Stage "admit" of the proxy's pipeline (lib/proxy/proxy.ts), besides
// reading the body (lib/proxy/body.ts): the request's target, checked, and
// the client's session.

/** The client's session id, and whether the proxy just minted it. */
export interface ClientSession {
  id: string;
  isNew: boolean;
}

export class ClientSessions {
  constructor(
    readonly opts: ResolvedOptions,
    readonly time: Scheduler,
    readonly onStoreError: (requestId: string | null, error: unknown) => void,
  ) {}

  /**
   * The client's session, when it brought one the proxy handed out: signed
   * with the secret, or (without a secret) known to the store. Any other id
   * (one the client or an attacker picked) is replaced by a fresh one, so a
   * session is never fixed from outside.
   */
  async find(req: IncomingMessage): Promise<ClientSession> {
    const { opts } = this;
    const cfg = opts.session;
    if (!cfg) return { id: '', isNew: false };
    let id: string | undefined;
    if (cfg.header) id = firstHeader(req.headers[cfg.header]);
    if (id === undefined && cfg.cookie) id = readCookie(req.headers.cookie, cfg.cookie);
    if (id !== undefined && SESSION_ID.test(id)) {
      if (opts.secret !== undefined) {
        if (isSignedSessionId(id, opts.secret)) return { id, isNew: false };
      } else {
        const known = await withTimeout(opts.store.getSession(id), opts.storeTimeout, 'getSession', this.time).catch((error: unknown) => {
          this.onStoreError(null, error);
          return undefined;
        });
        if (known) return { id, isNew: false };
      }
    }
    // Not derived from the request id: that one is logged everywhere, a session id must not be.
    return { id: opts.secret !== undefined ? mintSignedSessionId(opts.secret) : mintSessionId(), isNew: true };
  }

  headers(req: IncomingMessage, id: string): Record<string, string> {
    const { opts } = this;
    const cfg = opts.session;
    if (!cfg) return {};
    if (cfg.header) return { [cfg.header]: id };
    const tls = (req.socket as { encrypted?: boolean } | undefined)?.encrypted || (opts.trustForwarded && firstHeader(req.headers['x-forwarded-proto']) === 'https');
    const secure = cfg.secure === 'auto' ? tls : cfg.secure;
    let cookie = `${cfg.cookie}=${id}; Path=${cfg.path}; HttpOnly; SameSite=${cfg.sameSite}`;
    if (cfg.domain) cookie += `; Domain=${cfg.domain}`;
    if (cfg.maxAge !== undefined) cookie += `; Max-Age=${cfg.maxAge}`;
    if (secure) cookie += '; Secure';
    return { 'set-cookie': cookie };
  }
}

/**
 * The request target in origin-form (`/path?query`), what every copy asks
 * its upstream (after the upstream's path prefix):
 * - an absolute-form target (`GET http://host/x`, which a client may send to
 *   any server) is reduced to its path and query, never sent on with its host;
 * - anything else that is not a path (`*`) is refused;
 * - a dot-segment (`.`, `..`, also percent-encoded) is refused: an upstream
 *   that normalises paths would serve `/api/../secret` from outside `/api`;
 * - mounted under a path in Express (`app.use('/svc', proxy)`), `/svc?x=1`
 *   reaches Express as `/?x=1`: the slash it inserted is not the client's,
 *   so the query follows the upstream's prefix directly (`/prefix?x=1`).
 *   The result then starts with `?` or is empty, and the race puts the
 *   prefix (or a single `/`) in front.
 */
export function requestTarget(req: IncomingMessage, url: { url: string; originalUrl: string } | undefined = undefined): string | { reason: string } {
  const raw = url?.url ?? req.url ?? '/';
  let target: string;
  if (raw.startsWith('/')) target = raw;
  else if (/^https?:\/\//i.test(raw)) {
    try {
      const url = new URL(raw);
      target = url.pathname + url.search;
    } catch {
      return { reason: 'the request target is not a valid URL' };
    }
  } else return { reason: 'the request target must be a path (origin-form) or an absolute URL' };
  const q = target.indexOf('?');
  const pathname = q === -1 ? target : target.slice(0, q);
  if (hasDotSegment(pathname)) return { reason: 'the request path may not contain dot-segments (`.` or `..`, in any encoding)' };
  const original = url?.originalUrl ?? (req as { originalUrl?: string }).originalUrl;
  if (pathname === '/' && typeof original === 'string' && original !== raw) {
    const oq = original.indexOf('?');
    const originalPath = oq === -1 ? original : original.slice(0, oq);
    if (!originalPath.endsWith('/')) return target.slice(1);
  }
  return target;
}

/** Every percent-escape, decoded once (as bytes read as Latin-1: only `.` `/` `\\` and spaces matter here). */
const ESCAPE = /%([0-9a-f]{2})/gi;

/**
 * Whether a path has a dot-segment under any reading an upstream may give
 * it, so that no upstream that normalises paths serves `/api/../secret`
 * from outside `/api`: percent-decoded once, twice or three times over
 * (`%2e%2e`, `..%2f`, `%252e`, `%25%32%65`); with `\\` as a separator (IIS);
 * without a segment's `;` parameters (`..;/`, as Tomcat and Spring read
 * it); a segment of dots only, trailing spaces dropped (Windows: `...`,
 * `.. `). Dots inside a name (`v1.2`, `..hidden`) are names. A path still
 * holding escapes after three decodings is refused too.
 */
function hasDotSegment(pathname: string): boolean {
  // Most paths hold no `.`, `%` or backslash: nothing to read twice.
  if (!/[.%\\]/.test(pathname)) return false;
  let path = pathname;
  for (let pass = 0; ; pass++) {
    for (const segment of path.split(/[/\\]/)) {
      const name = segment.split(';', 1)[0]!.trimEnd();
      if (name.length > 0 && /^\.+$/.test(name)) return true;
    }
    const next = path.replace(ESCAPE, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
    if (next === path) return false;
    // Still encoded after three decodings: no upstream reads it as a name.
    if (pass === 3) return true;
    path = next;
  }
}

function firstHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function readCookie(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}
