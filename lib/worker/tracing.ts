import type { IncomingMessage, ServerResponse } from 'node:http';
import { live, OTEL, SPAN_KIND, SPAN_STATUS, tracerOf, type Attributes, type Context, type Span, type TracingApi } from '../tracing.js';
import { FLAG_ON, H, type CopyClaims } from '../wire/protocol.js';
import type { CommitGate, CommitStep } from './commit.js';

// A copy handled by the worker, as an OpenTelemetry span (docs/operations.md,
// "Tracing"): the child of the copy's span on the proxy (its trace context
// came in the copy's headers), or of the replica's own server span when HTTP
// instrumentation made one. The handler runs in its context, so the
// application's spans (its database calls) nest under it. The commit gate's
// steps are its events; it ends when the answer ends.

export const WORKER_SPAN = 'redundant-proxy worker';

export class CopyTrace {
  /** The copy's commit gate, once made: its outcome and fence go on the span. */
  gate: CommitGate | null = null;

  private constructor(
    readonly api: TracingApi,
    readonly span: Span,
    readonly context: Context,
  ) {}

  /**
   * The span of a copy the worker accepted for checking; null when tracing is
   * off (the API is not installed, no tracer provider is registered, or the
   * span neither records nor has a context to pass on).
   */
  static start(req: IncomingMessage, res: ServerResponse, c: CopyClaims): CopyTrace | null {
    const api = OTEL;
    if (!api) return null;
    let parent = api.context.active();
    const nested = api.trace.getSpan(parent) !== undefined;
    if (!nested) parent = api.propagation.extract(parent, req.headers);
    const span = tracerOf(api).startSpan(
      WORKER_SPAN,
      {
        // Without HTTP instrumentation it is the replica's side of the copy's exchange.
        kind: nested ? SPAN_KIND.internal : SPAN_KIND.server,
        attributes: {
          'http.request.method': req.method,
          'redundant_proxy.request_id': c.requestId,
          'redundant_proxy.duplicate_id': c.duplicateId,
          'redundant_proxy.upstream.id': c.upstreamId,
          'redundant_proxy.copy.index': c.index,
          'redundant_proxy.copy.of': c.of,
          'redundant_proxy.update': c.update,
        },
      },
      parent,
    );
    if (!live(api, span)) return null;
    const trace = new CopyTrace(api, span, api.trace.setSpan(parent, span));
    if (span.isRecording()) res.once('close', () => trace.#end(res));
    return trace;
  }

  /** Runs the handler in the span's context. */
  run<T>(fn: () => T): T {
    return this.api.context.with(this.context, fn);
  }

  /** A step of the commit gate (lib/worker/commit.ts), as an event. */
  step(step: CommitStep, fence: number | undefined): void {
    if (fence === undefined) this.span.addEvent(step);
    else this.span.addEvent(step, { 'redundant_proxy.fence': fence });
  }

  /** The answer ended (or its connection closed first: the proxy stopped the copy). */
  #end(res: ServerResponse): void {
    const attributes: Attributes = {};
    const gate = this.gate;
    if (gate?.outcome !== undefined) attributes['redundant_proxy.commit'] = gate.outcome;
    if (gate?.fence !== undefined) attributes['redundant_proxy.fence'] = gate.fence;
    const changed = res.getHeader(H.sessionChanged);
    if (changed !== undefined) attributes['redundant_proxy.session.changed'] = changed === FLAG_ON;
    if (res.headersSent) attributes['http.response.status_code'] = res.statusCode;
    if (!res.writableFinished) attributes['redundant_proxy.stopped'] = true;
    this.span.setAttributes(attributes);
    if (res.headersSent && res.statusCode >= 500) this.span.setStatus({ code: SPAN_STATUS.error, message: String(res.statusCode) });
    this.span.end();
  }
}
