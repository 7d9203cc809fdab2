import type { IncomingMessage } from 'node:http';
import { boolean, custom, field, func, MAX_TIMER_MS, number, object, objectOrFalse, oneOf, optional, parseOptions, refine, refuse, secret, string, type Schema } from '../schema.js';
import { MemorySessionStore } from '../store/memory.js';
import type { SessionStore } from '../store/types.js';
import { PREFIX } from '../wire/protocol.js';
import type { AdoptedAnswer, CancelInfo, EjectionOptions, OutgoingCopy, HealthCheckOptions, ProxyOptions, RetryOptions, ResolvedOptions, ResolvedSelect, ResolvedSession, SelectFunction, Upstream, UpstreamResponse, UpstreamSpec } from './options.js';
import { passesByDefault } from './health.js';
import { checkPrometheusOptions } from './prometheus.js';
import { parseHttp2, parseTls, settleTransport } from './tls.js';

// The proxy's options checked at construction, through the one option
// checker (lib/schema.ts): a bad or unknown option throws an
// `InvalidOptionError` naming it by its dotted path.

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const READ_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);
const ID = /^[A-Za-z0-9._:-]{1,64}$/;

export const defaultAccept = (r: UpstreamResponse): boolean => r.status < 500;
export const defaultIsUpdate = (req: IncomingMessage): boolean => !READ_METHODS.has(req.method ?? 'GET');

const millis = (d: number) => number({ unit: 'milliseconds', above: 0, default: d });
/** A timer's delay: above 2^31 - 1 ms Node fires it at once. */
const timerMillis = (d: number) => number({ unit: 'milliseconds', above: 0, max: MAX_TIMER_MS, default: d });

const HEDGE: Schema<{ delay: number | 'adaptive'; maxExtraLoad: number }> = {
  delay: field(`must be a number of milliseconds from 0 to ${MAX_TIMER_MS} or 'adaptive'`, (v) => v === 'adaptive' || (typeof v === 'number' && Number.isFinite(v) && v >= 0 && v <= MAX_TIMER_MS), { default: 0 }),
  maxExtraLoad: number({ min: 0, infinite: true, default: (r) => (r.delay === 'adaptive' ? 0.1 : Infinity) }),
};

const EJECTION: Schema<Required<EjectionOptions>> = {
  consecutiveFailures: number({ integer: true, min: 1, default: 5 }),
  baseEjectionTime: millis(30_000),
  maxEjectionTime: number({ unit: 'milliseconds', min: { label: 'baseEjectionTime', value: (r) => r.baseEjectionTime as number }, default: (r) => Math.max(300_000, r.baseEjectionTime as number) }),
  maxEjectedPercent: number({ min: 0, max: 100, default: 50 }),
};

const RETRY: Schema<Required<RetryOptions>> = {
  attempts: number({ integer: true, min: 1, max: 10, default: 2 }),
  backoff: timerMillis(25),
  maxBackoff: number({ unit: 'milliseconds', min: { label: 'backoff', value: (r) => r.backoff as number }, max: MAX_TIMER_MS, default: (r) => Math.max(1000, r.backoff as number) }),
};

const HEALTH_CHECK: Schema<Required<HealthCheckOptions>> = {
  path: string('must be a path starting with /', (s) => /^\/[\x21-\x7e]*$/.test(s), '/'),
  interval: timerMillis(5000),
  timeout: timerMillis(2000),
  unhealthyThreshold: number({ integer: true, min: 1, default: 3 }),
  healthyThreshold: number({ integer: true, min: 1, default: 2 }),
  expect: func(passesByDefault),
};

// Off unless given: absent is false here (an objectOrFalse alone would fill in every default).
const RETRY_FIELD = objectOrFalse(RETRY);
const HEALTH_CHECK_FIELD = objectOrFalse(HEALTH_CHECK);

type ResolvedIdempotency = Exclude<ResolvedOptions['idempotency'], false>;
const IDEMPOTENCY: Schema<ResolvedIdempotency> = {
  scope: optional(func<(req: IncomingMessage) => string | undefined>()),
  ttl: millis(86_400_000),
  maxAnswerSize: number({ integer: true, unit: 'bytes', min: 0, default: 1024 * 1024 }),
  wait: number({ unit: 'milliseconds', min: 0, max: MAX_TIMER_MS, default: 1000 }),
};

const SESSION: Schema<Omit<ResolvedSession, 'cookie' | 'header'> & { cookie: string | undefined; header: string | undefined }> = {
  cookie: optional(string('must be a cookie name', (s) => TOKEN.test(s))),
  header: optional(string('must be a header name outside x-redundant-*', (s) => TOKEN.test(s) && !s.toLowerCase().startsWith(PREFIX))),
  secure: oneOf([true, false, 'auto'], 'auto'),
  sameSite: refine(oneOf(['Strict', 'Lax', 'None'], 'Lax'), "'None' needs secure: true (browsers refuse it otherwise)", (v, r) => v !== 'None' || r.secure === true),
  domain: optional(string('must be a domain name', (s) => /^\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$/.test(s))),
  path: string('must be a path starting with / (no ; or spaces)', (s) => /^\/[\x21-\x3a\x3c-\x7e]*$/.test(s), '/'),
  maxAge: optional(number({ integer: true, unit: 'seconds', min: 0 })),
};

/**
 * The proxy's options as the schema resolves them, before they are put
 * together: the resolved options, less what is derived afterwards (the
 * store, hedge and per-try timeout as the race reads them), plus the TLS
 * settings that go into each upstream.
 */
type Parsed = Omit<ResolvedOptions, 'store' | 'ownsStore' | 'hedgeDelay' | 'maxExtraLoad' | 'perTryTimeout'> & {
  tls: ReturnType<typeof parseTls>;
  http2: boolean | undefined;
  store: SessionStore | undefined;
  hedge: { delay: number | 'adaptive'; maxExtraLoad: number };
  perTryTimeout: number | undefined;
};

const PROXY: Schema<Parsed> = {
  upstreams: custom('must be a non-empty array of URLs or { id, url }', (v) => resolveUpstreams(v)),
  tls: custom('must be { ca?, cert?, key?, rejectUnauthorized?, servername? }', (v, name) => parseTls(v, name)),
  http2: custom('must be true or false', (v, name) => parseHttp2(v, name)),
  store: optional(field<SessionStore>('must implement SessionStore', (s) => typeof s === 'object' && s !== null && typeof (s as SessionStore).recordCopy === 'function' && typeof (s as SessionStore).recordAdoption === 'function')),
  copies: number({
    integer: true,
    min: 1,
    max: { label: 'the number of upstreams', value: (r) => (r.upstreams as Upstream[]).length },
    default: (r) => (r.upstreams as Upstream[]).length,
  }),
  hedge: object(HEDGE),
  timeout: timerMillis(30_000),
  perTryTimeout: optional(refine(timerMillis(0), (r) => `must be a number of milliseconds > 0 and below timeout (${r.timeout as number})`, (v, r) => v < (r.timeout as number))),
  retry: custom('must be retry options or false', (v, name) => (v === undefined ? false : RETRY_FIELD.resolve(v, name, {}))),
  healthCheck: custom('must be health check options or false', (v, name) => (v === undefined ? false : HEALTH_CHECK_FIELD.resolve(v, name, {}))),
  accept: func(defaultAccept),
  select: custom("must be 'first', { quorum: k } or a function", (v, name, r) => resolveSelect(v, name, r.copies as number)),
  isUpdate: func(defaultIsUpdate),
  secret: secret(),
  maxBodySize: number({ integer: true, unit: 'bytes', min: 0, default: 1024 * 1024 }),
  bodyTimeout: timerMillis(30_000),
  bodyIdleTimeout: timerMillis(10_000),
  maxBufferedBytes: number({ integer: true, unit: 'bytes', min: { label: 'maxBodySize', value: (r) => r.maxBodySize as number }, default: 64 * 1024 * 1024 }),
  connections: number({ integer: true, min: 1, default: 1024 }),
  maxInFlight: number({ integer: true, min: 1, max: { label: 'connections', value: (r) => r.connections as number }, default: (r) => r.connections as number }),
  trustForwarded: boolean(false),
  session: custom('must be session options or false', (v, name) => resolveSession(v, name)),
  storeTimeout: timerMillis(1000),
  onCancel: optional(func<(info: CancelInfo) => void | Promise<void>>()),
  cancelTimeout: timerMillis(5000),
  idempotency: objectOrFalse(IDEMPOTENCY),
  ejection: objectOrFalse(EJECTION),
  prometheus: custom('must be prometheus options', (v) => checkPrometheusOptions(v)),
  rewriteCopy: optional(func<(copy: OutgoingCopy) => void>()),
  rewriteAnswer: optional(func<(answer: AdoptedAnswer) => void | Promise<void>>()),
  tunnelGrace: number({ unit: 'milliseconds', min: 0, max: MAX_TIMER_MS, default: 0 }),
  now: func(() => performance.now()),
};

export function resolveOptions(options: ProxyOptions): ResolvedOptions {
  const o = parseOptions(PROXY, options);
  return {
    upstreams: settleTransport(o.upstreams, o.tls, o.http2),
    onCancel: o.onCancel,
    cancelTimeout: o.cancelTimeout,
    idempotency: o.idempotency,
    ejection: o.ejection,
    prometheus: o.prometheus,
    store: o.store ?? new MemorySessionStore(),
    ownsStore: o.store === undefined,
    session: o.session,
    storeTimeout: o.storeTimeout,
    copies: o.copies,
    hedgeDelay: o.hedge.delay,
    maxExtraLoad: o.hedge.maxExtraLoad,
    timeout: o.timeout,
    perTryTimeout: o.perTryTimeout ?? 0,
    retry: o.retry,
    healthCheck: o.healthCheck,
    accept: o.accept,
    select: o.select,
    isUpdate: o.isUpdate,
    secret: o.secret,
    trustForwarded: o.trustForwarded,
    maxBodySize: o.maxBodySize,
    bodyTimeout: o.bodyTimeout,
    bodyIdleTimeout: o.bodyIdleTimeout,
    maxBufferedBytes: o.maxBufferedBytes,
    connections: o.connections,
    maxInFlight: o.maxInFlight,
    rewriteCopy: o.rewriteCopy,
    rewriteAnswer: o.rewriteAnswer,
    tunnelGrace: o.tunnelGrace,
    now: o.now,
  };
}

function resolveSelect(select: unknown, name: string, copies: number): ResolvedSelect {
  if (select === undefined || select === 'first') return { kind: 'first' };
  if (typeof select === 'function') return { kind: 'custom', choose: select as SelectFunction };
  if (typeof select !== 'object' || select === null) refuse(name, "must be 'first', { quorum: k } or a function", select);
  const { quorum } = parseOptions({ quorum: number({ integer: true, min: 1, max: { label: 'copies', value: () => copies } }) }, select, name);
  // One answer agreeing with itself: the first acceptable one, streamed.
  return quorum === 1 ? { kind: 'first' } : { kind: 'quorum', quorum };
}

function resolveSession(session: unknown, name: string): ResolvedOptions['session'] {
  if (session === false) return false;
  if (session !== undefined && (typeof session !== 'object' || session === null)) refuse(name, `must be { ${Object.keys(SESSION).join('?, ')}? } or false`, session);
  const { cookie, header, ...attributes } = parseOptions(SESSION, session ?? {}, name);
  if (cookie === undefined && header === undefined) return { cookie: 'rp_session', header: undefined, ...attributes };
  return { cookie, header: header?.toLowerCase(), ...attributes };
}

function resolveUpstreams(list: unknown): Upstream[] {
  if (!Array.isArray(list) || list.length === 0) refuse('upstreams', 'must be a non-empty array of URLs or { id, url }', list);
  const seen = new Set<string>();
  return (list as unknown[]).map((entry, i) => {
    const name = `upstreams[${i}]`;
    let url: string;
    let id: string | undefined;
    if (typeof entry === 'string') url = entry;
    else if (typeof entry === 'object' && entry !== null && typeof (entry as UpstreamSpec).url === 'string') {
      url = (entry as UpstreamSpec).url;
      id = (entry as UpstreamSpec).id;
      if (typeof id !== 'string' || !ID.test(id)) refuse(`${name}.id`, 'must be 1-64 characters of letters, digits and ._:-', id);
    } else refuse(name, 'must be a URL string or { id, url }', entry);
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      refuse(name, 'must be an absolute http(s) URL', url);
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') refuse(name, 'must be an http: or https: URL', url);
    if (parsed.search || parsed.hash || parsed.username || parsed.password) refuse(name, 'must not carry a query, fragment or credentials', url);
    const explicit = id !== undefined;
    id ??= parsed.host;
    if (seen.has(id)) refuse(name, `repeats the upstream id "${id}"`, url);
    seen.add(id);
    const own = typeof entry === 'string' ? {} : { tls: parseTls((entry as UpstreamSpec).tls, `${name}.tls`), http2: parseHttp2((entry as UpstreamSpec).http2, `${name}.http2`) };
    return { id, label: explicit ? id : `upstream-${i + 1}`, origin: parsed.origin, prefix: parsed.pathname.replace(/\/+$/, ''), ...own };
  });
}
