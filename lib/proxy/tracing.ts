import type { IncomingMessage } from 'node:http';
import { performance } from 'node:perf_hooks';
import { live, OTEL, SPAN_KIND, SPAN_STATUS, tracerOf, type Attributes, type Context, type Span, type TracingApi } from '../tracing.js';
import type { Upstream } from './options.js';
import type { CopyOutcome, CopyReport, RaceOutcome, RaceReport } from './report.js';

// The race as an OpenTelemetry trace (docs/operations.md, "Tracing"): a span
// for the race, a child span for each copy sent, and each copy's own trace
// context in its headers, so that the worker's span joins its copy's. The
// adopted copy's span says so, and the race's span names it. Started by stage
// "race", told of each copy by race/copy.ts, ended with the race's report by
// its observer (lib/proxy/observers.ts).

/** Span names. */
export const SPAN = { race: 'redundant-proxy race', copy: 'redundant-proxy copy' } as const;

/** A copy's fate in its span: the report's outcome, in the words of a trace. */
const COPY_OUTCOME: Record<CopyOutcome, string> = {
  won: 'adopted',
  stopped: 'cancelled',
  cancelled: 'cancelled',
  drained: 'drained',
  failed: 'failed',
  rejected: 'rejected',
  lost: 'lost',
  applied: 'applied',
  agreed: 'agreed',
  outvoted: 'outvoted',
  'not-sent': 'not-sent',
};

/** Race outcomes that are not an error of the race's span: an answer went out whole, or nobody waited for one. */
const FINE: ReadonlySet<RaceOutcome> = new Set(['won', 'client-closed']);

interface TracedCopy {
  span: Span;
  /** When its exchange with the upstream ended (`performance.now()`), or null while it runs. */
  endedAt: number | null;
}

/** What a race's span starts with. */
export interface RaceTraceStart {
  requestId: string;
  method: string;
  /** The request target every copy asks (its query is left out of every span). */
  path: string;
  update: boolean;
  /** Copies planned. */
  planned: number;
}

export class RaceTrace {
  readonly #copies = new Map<number, TracedCopy>();

  private constructor(
    readonly api: TracingApi,
    readonly span: Span,
    /** The race span's context: each copy's parent. */
    readonly context: Context,
    readonly method: string,
    readonly path: string,
  ) {}

  /**
   * The race's span, the child of the active span (a gateway's server span,
   * with HTTP instrumentation), else of the trace context the client sent.
   * Null when tracing is off: the API is not installed, no tracer provider is
   * registered, or the span neither records nor has a context to pass on.
   * `headers` are the ones every copy shares: the client's trace context is
   * taken out of them, since each copy carries its own.
   */
  static start(req: IncomingMessage, s: RaceTraceStart, headers: string[]): RaceTrace | null {
    const api = OTEL;
    if (!api) return null;
    let parent = api.context.active();
    if (!api.trace.getSpan(parent)) parent = api.propagation.extract(parent, req.headers);
    const path = withoutQuery(s.path);
    const span = tracerOf(api).startSpan(
      SPAN.race,
      {
        kind: SPAN_KIND.internal,
        attributes: {
          'http.request.method': s.method,
          'url.path': path,
          'redundant_proxy.request_id': s.requestId,
          'redundant_proxy.update': s.update,
          'redundant_proxy.copies.planned': s.planned,
        },
      },
      parent,
    );
    if (!live(api, span)) return null;
    removeFields(headers, api.propagation.fields());
    return new RaceTrace(api, span, api.trace.setSpan(parent, span), s.method, path);
  }

  /**
   * Step "send": a copy leaves. Its span starts (when the race's records),
   * and its trace context is appended to its `headers`: the worker's span
   * becomes its child. Never signed: the signature covers the copy's own
   * headers only (lib/wire/protocol.ts).
   */
  copySent(copy: CopyReport, upstream: Upstream, of: number, hedged: boolean, headers: string[]): void {
    const { api } = this;
    let context = this.context;
    if (this.span.isRecording()) {
      const url = new URL(upstream.origin);
      const target = withoutQuery(upstream.prefix + this.path);
      const span = tracerOf(api).startSpan(
        SPAN.copy,
        {
          kind: SPAN_KIND.client,
          attributes: {
            'http.request.method': this.method,
            'server.address': url.hostname.replace(/^\[|\]$/g, ''),
            'server.port': portOf(url),
            'url.full': upstream.origin + (target.startsWith('/') ? target : `/${target}`),
            'redundant_proxy.upstream.id': upstream.id,
            'redundant_proxy.upstream.origin': upstream.origin,
            'redundant_proxy.duplicate_id': copy.duplicateId,
            'redundant_proxy.copy.index': copy.index,
            'redundant_proxy.copy.of': of,
            'redundant_proxy.copy.hedged': hedged,
          },
        },
        context,
      );
      this.#copies.set(copy.index, { span, endedAt: null });
      context = api.trace.setSpan(context, span);
    }
    const carrier: Record<string, string> = {};
    api.propagation.inject(context, carrier);
    for (const name in carrier) headers.push(name, carrier[name]!);
  }

  /** A copy's exchange with its upstream is over (its last try's, with retries): its span ends then, though its outcome is known only with the report. */
  copyEnded(index: number): void {
    const traced = this.#copies.get(index);
    if (traced) traced.endedAt = performance.now();
  }

  /** The race is reported: every copy's span and the race's get their outcome, and end. */
  end(report: RaceReport): void {
    let sent = 0;
    let hedged = 0;
    let adoptedIndex: number | undefined;
    for (const copy of report.copies) {
      if (copy.outcome !== 'not-sent' || copy.sentAt !== null) sent++;
      if (copy.hedged) hedged++;
      if (copy.duplicateId === report.adopted) adoptedIndex = copy.index;
      const traced = this.#copies.get(copy.index);
      if (traced) endCopy(traced, copy, copy.duplicateId === report.adopted);
    }
    const attributes: Attributes = {
      'redundant_proxy.outcome': report.outcome,
      'redundant_proxy.copies.sent': sent,
      'redundant_proxy.copies.hedged': hedged,
      'redundant_proxy.committed': report.committed,
    };
    if (report.status !== null) attributes['http.response.status_code'] = report.status;
    if (report.servedBy !== null) attributes['redundant_proxy.served_by'] = report.servedBy;
    if (report.adopted !== null) attributes['redundant_proxy.adopted.duplicate_id'] = report.adopted;
    if (adoptedIndex !== undefined) attributes['redundant_proxy.adopted.index'] = adoptedIndex;
    this.span.setAttributes(attributes);
    if (!FINE.has(report.outcome)) this.span.setStatus({ code: SPAN_STATUS.error, message: report.outcome });
    this.span.end();
  }
}

function endCopy(traced: TracedCopy, copy: CopyReport, adopted: boolean): void {
  const { span } = traced;
  const attributes: Attributes = {
    'redundant_proxy.copy.outcome': COPY_OUTCOME[copy.outcome],
    'redundant_proxy.copy.adopted': adopted,
  };
  // Stopped after another copy committed the update: its onCancel hook ran.
  if (copy.outcome === 'cancelled') attributes['redundant_proxy.copy.after_commit'] = true;
  if (copy.status !== null) attributes['http.response.status_code'] = copy.status;
  if (copy.error !== null) attributes['redundant_proxy.copy.error'] = copy.error;
  if (copy.outcome === 'failed') attributes['error.type'] = copy.error ?? 'failed';
  span.setAttributes(attributes);
  if (copy.outcome === 'failed') span.setStatus({ code: SPAN_STATUS.error, message: copy.error ?? undefined });
  span.end(traced.endedAt ?? undefined);
}

function withoutQuery(target: string): string {
  const q = target.indexOf('?');
  return q === -1 ? target : target.slice(0, q);
}

function portOf(url: URL): number {
  if (url.port) return Number(url.port);
  return url.protocol === 'https:' ? 443 : 80;
}

/** Takes every header named in `fields` (lowercase) out of a flat `[name, value, …]` list. */
function removeFields(headers: string[], fields: readonly string[]): void {
  if (fields.length === 0) return;
  let to = 0;
  for (let from = 0; from < headers.length; from += 2) {
    const name = headers[from]!;
    if (fields.includes(name)) continue;
    headers[to++] = name;
    headers[to++] = headers[from + 1]!;
  }
  headers.length = to;
}
