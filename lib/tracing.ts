import { createRequire } from 'node:module';

// Tracing with OpenTelemetry, when the application installed its API
// (`@opentelemetry/api` is an optional peer dependency). It is loaded once,
// synchronously, when this module loads: without it every hook of the proxy
// and the worker is a null check. With it but no tracer provider registered,
// spans are non-recording and carry no valid context: the hooks stop there
// (docs/operations.md, "Tracing").
//
// The types below are the part of the API the library uses, written out so
// that the library's declarations never name a package the user may not
// have (a test checks them against the real API).

export interface SpanContext {
  traceId: string;
  spanId: string;
  traceFlags: number;
}

export type AttributeValue = string | number | boolean;
export type Attributes = Record<string, AttributeValue | undefined>;

export interface Span {
  spanContext(): SpanContext;
  setAttribute(key: string, value: AttributeValue): this;
  setAttributes(attributes: Attributes): this;
  addEvent(name: string, attributes?: Attributes): this;
  setStatus(status: { code: number; message?: string }): this;
  isRecording(): boolean;
  /** `endTime`: milliseconds of `performance.now()`, or since the epoch. */
  end(endTime?: number): void;
}

/** An OpenTelemetry context: opaque here. */
export interface Context {
  getValue(key: symbol): unknown;
}

export interface SpanOptions {
  kind?: number;
  attributes?: Attributes;
}

export interface Tracer {
  startSpan(name: string, options?: SpanOptions, context?: Context): Span;
}

/** What a propagator reads a context from: a message's headers. */
export type Carrier = Record<string, string | string[] | undefined>;

/** The part of `@opentelemetry/api` the library uses. */
export interface TracingApi {
  trace: {
    getTracer(name: string, version?: string): Tracer;
    getSpan(context: Context): Span | undefined;
    setSpan(context: Context, span: Span): Context;
    isSpanContextValid(spanContext: SpanContext): boolean;
  };
  context: {
    active(): Context;
    with<F extends () => ReturnType<F>>(context: Context, fn: F): ReturnType<F>;
  };
  propagation: {
    inject(context: Context, carrier: Record<string, string>): void;
    extract(context: Context, carrier: Carrier): Context;
    fields(): string[];
  };
}

/** `SpanKind` and `SpanStatusCode` of the API: numbers fixed by the OpenTelemetry specification. */
export const SPAN_KIND = { internal: 0, server: 1, client: 2 } as const;
export const SPAN_STATUS = { unset: 0, ok: 1, error: 2 } as const;

/** The instrumentation scope of every span of the library. */
export const TRACER_NAME = 'redundant-proxy';

/**
 * Loads the API through `load` (a `require`); null when it is not installed
 * or is not the API. ESM has no synchronous optional import, and a top-level
 * await would make every importer of the library asynchronous.
 */
export function loadTracing(load: (id: string) => unknown): TracingApi | null {
  try {
    const api = load('@opentelemetry/api') as Partial<TracingApi> | undefined;
    return typeof api?.trace?.getTracer === 'function' && typeof api.propagation?.inject === 'function' && typeof api.context?.with === 'function' ? (api as TracingApi) : null;
  } catch {
    return null;
  }
}

/** The API, or null when it is not installed. */
export const OTEL: TracingApi | null = loadTracing(createRequire(import.meta.url));

/**
 * The tracer of the library, asked for each time: a tracer taken before the
 * application registers its provider would stay bound to the one it found
 * first (the API's proxy tracer keeps its first delegate).
 */
export function tracerOf(api: TracingApi): Tracer {
  return api.trace.getTracer(TRACER_NAME);
}

/** A span worth carrying on: it records, or its context (a sampled-out trace's) must still travel. */
export function live(api: TracingApi, span: Span): boolean {
  return span.isRecording() || api.trace.isSpanContextValid(span.spanContext());
}
