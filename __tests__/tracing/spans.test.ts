import http from 'node:http';
import express from 'express';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from '@jest/globals';
import * as api from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { MemorySessionStore, redundantProxy, redundantWorker, type RedundantHandle, type RedundantProxy } from '../../lib/index.js';
import { OTEL, type TracingApi } from '../../lib/tracing.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { testClient } from '../helpers/client.js';
import { eventually } from '../helpers/replica.js';
import { listen, sleep } from '../helpers/upstream.js';

// The race as a trace, with the SDK's in-memory exporter: real replicas run
// the worker, the proxy races three copies to them, and the spans of both
// sides are checked against each other.

const SECRET = 'tracing-secret-0123456789';
const CLIENT_TRACE = '0af7651916cd43dd8448eb211c80319c';
const CLIENT_SPAN = 'b7ad6b7169203331';

// The library's own view of the API must be the API (a compile-time check too).
const typed: TracingApi = api;

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const contextManager = new AsyncLocalStorageContextManager();
const client = testClient();
const open = closeAfterEach();

beforeAll(() => {
  api.context.setGlobalContextManager(contextManager.enable());
  api.propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  api.trace.setGlobalTracerProvider(provider);
});

afterAll(async () => {
  await client.close();
  await provider.shutdown();
  api.trace.disable();
  api.propagation.disable();
  api.context.disable();
});

beforeEach(() => exporter.reset());

/** A node:http listener in the span a framework's HTTP instrumentation would open for each request. */
function instrumented(listener: http.RequestListener, name: string): http.RequestListener {
  return (req, res) => {
    const parent = api.propagation.extract(api.context.active(), req.headers);
    const span = api.trace.getTracer('test-http').startSpan(name, { kind: api.SpanKind.SERVER }, parent);
    res.once('close', () => span.end());
    api.context.with(api.trace.setSpan(parent, span), () => listener(req, res));
  };
}

type Handler = (handle: RedundantHandle, id: string) => Promise<unknown>;

/** Waits `ms`, or less if the proxy stops the copy. */
const wait = (h: RedundantHandle, ms: number) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    h.signal.addEventListener('abort', () => (clearTimeout(timer), resolve()), { once: true });
  });

interface Seen {
  traceparent: string | string[] | undefined;
  tracestate: string | string[] | undefined;
  /** The span active in the handler. */
  active: string | undefined;
}

/** Three Express replicas running the worker, behind a proxy in a bare node:http gateway. */
async function fleet(handler: Handler, opts: { gateway?: 'instrumented'; replicas?: 'instrumented' } = {}) {
  const store = new MemorySessionStore();
  open.push(store);
  const seen = new Map<string, Seen>();
  const urls: { id: string; url: string }[] = [];
  for (const id of ['a', 'b', 'c']) {
    const app = express();
    app.use(redundantWorker({ id, store, secret: SECRET }));
    app.use(async (req, res) => {
      const handle = (req as unknown as { redundant: RedundantHandle }).redundant;
      if (!handle.direct) seen.set(id, { traceparent: req.headers.traceparent, tracestate: req.headers.tracestate, active: api.trace.getActiveSpan()?.spanContext().spanId });
      const body = req.url === '/warm-up' ? {} : await handler(handle, id);
      if (!res.destroyed) res.json(body);
    });
    app.use(redundantWorker({ id, store, secret: SECRET }).errorHandler);
    const server = await listen(opts.replicas ? instrumented(app, `replica ${id}`) : app);
    open.push(server);
    urls.push({ id, url: server.url });
  }
  const proxy: RedundantProxy = redundantProxy({ upstreams: urls, store, secret: SECRET, timeout: 10_000 });
  const gw = await listen(opts.gateway ? instrumented(proxy.handler, 'gateway') : proxy.handler);
  open.push(gw, proxy);
  // Updates are copied only to upstreams that have shown they run the worker.
  for (let i = 0; i < 50 && !Object.values(proxy.metrics().upstreams).every((u) => u.worker); i++) await client.send(`${gw.url}/warm-up`);
  await eventually(() => exporter.getFinishedSpans().filter((s) => s.name === 'redundant-proxy race').length > 0);
  await sleep(50);
  exporter.reset();
  seen.clear();
  return { gw, seen };
}

interface RaceSpans {
  race: ReadableSpan;
  copies: ReadableSpan[];
  workers: ReadableSpan[];
}

/**
 * The spans of one race (its request id), once the race's, its three copies'
 * and their workers' have all ended: the copies' and workers' are found by
 * the race's trace, so a span a warm-up ended late cannot be taken for them.
 */
async function raceSpans(requestId: string): Promise<RaceSpans> {
  return eventually(() => {
    const spans = exporter.getFinishedSpans();
    const race = spans.filter((s) => s.name === 'redundant-proxy race' && s.attributes['redundant_proxy.request_id'] === requestId);
    if (race.length !== 1) return undefined;
    const trace = race[0]!.spanContext().traceId;
    const inTrace = spans.filter((s) => s.spanContext().traceId === trace);
    const copies = inTrace.filter((s) => s.name === 'redundant-proxy copy');
    const workers = inTrace.filter((s) => s.name === 'redundant-proxy worker');
    if (copies.length !== 3 || workers.length !== 3) return undefined;
    const index = (s: ReadableSpan) => s.attributes['redundant_proxy.copy.index'] as number;
    return { race: race[0]!, copies: copies.sort((x, y) => index(x) - index(y)), workers: workers.sort((x, y) => index(x) - index(y)) };
  }, 5000);
}

const id = (s: ReadableSpan) => s.spanContext().spanId;
const traceId = (s: ReadableSpan) => s.spanContext().traceId;
const parentOf = (s: ReadableSpan) => s.parentSpanContext?.spanId;
const byUpstream = (spans: ReadableSpan[], upstream: string) => spans.find((s) => s.attributes['redundant_proxy.upstream.id'] === upstream)!;

describe('tracing', () => {
  it('the library loaded the API', () => {
    expect(OTEL).not.toBeNull();
    expect(typed.trace).toBe(api.trace);
  });

  it('a read raced on three copies: one race span, three copy spans, each worker span the child of its copy’s; the adopted copy marked, the stopped ones cancelled', async () => {
    const { gw, seen } = await fleet(async (h, who) => {
      if (who !== 'a') await wait(h, 3000);
      return { who };
    });
    const res = await client.send(`${gw.url}/items/7?secret=1`);
    expect(res.status).toBe(200);
    expect(res.json()).toEqual({ who: 'a' });
    const { race, copies, workers } = await raceSpans(String(res.headers['x-request-id']));

    expect(race.kind).toBe(api.SpanKind.INTERNAL);
    expect(race.parentSpanContext).toBeUndefined();
    expect(race.attributes).toMatchObject({
      'http.request.method': 'GET',
      'url.path': '/items/7',
      'http.response.status_code': 200,
      'redundant_proxy.request_id': res.headers['x-request-id'],
      'redundant_proxy.update': false,
      'redundant_proxy.copies.planned': 3,
      'redundant_proxy.copies.sent': 3,
      'redundant_proxy.copies.hedged': 0,
      'redundant_proxy.outcome': 'won',
      'redundant_proxy.served_by': 'a',
    });
    const adopted = byUpstream(copies, 'a');
    expect(race.attributes['redundant_proxy.adopted.index']).toBe(adopted.attributes['redundant_proxy.copy.index']);
    expect(race.attributes['redundant_proxy.adopted.duplicate_id']).toBe(adopted.attributes['redundant_proxy.duplicate_id']);

    for (const [i, copy] of copies.entries()) {
      expect(copy.kind).toBe(api.SpanKind.CLIENT);
      expect(traceId(copy)).toBe(traceId(race));
      expect(parentOf(copy)).toBe(id(race));
      expect(copy.attributes).toMatchObject({ 'redundant_proxy.copy.index': i + 1, 'redundant_proxy.copy.of': 3, 'redundant_proxy.copy.hedged': false, 'http.request.method': 'GET', 'server.address': '127.0.0.1' });
      // No query in a span: it may carry secrets.
      expect(String(copy.attributes['url.full'])).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/items\/7$/);
    }
    expect(adopted.attributes).toMatchObject({ 'redundant_proxy.copy.outcome': 'adopted', 'redundant_proxy.copy.adopted': true, 'http.response.status_code': 200 });
    for (const stopped of ['b', 'c']) {
      expect(byUpstream(copies, stopped).attributes).toMatchObject({ 'redundant_proxy.copy.outcome': 'cancelled', 'redundant_proxy.copy.adopted': false });
    }

    for (const worker of workers) {
      const copy = copies.find((c) => c.attributes['redundant_proxy.duplicate_id'] === worker.attributes['redundant_proxy.duplicate_id'])!;
      expect(copy).toBeDefined();
      expect(worker.kind).toBe(api.SpanKind.SERVER);
      expect(traceId(worker)).toBe(traceId(race));
      expect(parentOf(worker)).toBe(id(copy));
      expect(worker.attributes).toMatchObject({ 'redundant_proxy.request_id': res.headers['x-request-id'], 'redundant_proxy.upstream.id': copy.attributes['redundant_proxy.upstream.id'], 'redundant_proxy.update': false });
      // The handler ran in the worker span's context.
      expect(seen.get(worker.attributes['redundant_proxy.upstream.id'] as string)!.active).toBe(id(worker));
    }
    expect(byUpstream(workers, 'a').attributes).toMatchObject({ 'http.response.status_code': 200 });
    expect(byUpstream(workers, 'a').attributes['redundant_proxy.stopped']).toBeUndefined();
    expect(byUpstream(workers, 'b').attributes).toMatchObject({ 'redundant_proxy.stopped': true });
  });

  it('an update: the committing copy’s worker span says won with its fence and shows its claim, the others lost', async () => {
    // `a` claims first and holds the claim while the others ask for it: they wait for its grant, not for a time.
    let aHolds!: () => void;
    const held = new Promise<void>((r) => (aHolds = r));
    const { gw } = await fleet(async (h, who) => {
      if (who !== 'a') await held;
      await h.commitOnce(() => {
        if (who !== 'a') return undefined;
        aHolds();
        return sleep(100);
      });
      return { who };
    });
    const res = await client.send(`${gw.url}/orders`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    expect(res.status).toBe(200);
    expect(res.json()).toEqual({ who: 'a' });
    const { race, copies, workers } = await raceSpans(String(res.headers['x-request-id']));
    expect(race.attributes).toMatchObject({ 'redundant_proxy.update': true, 'redundant_proxy.committed': true, 'redundant_proxy.served_by': 'a', 'http.request.method': 'POST' });
    expect(byUpstream(copies, 'a').attributes).toMatchObject({ 'redundant_proxy.copy.outcome': 'adopted', 'redundant_proxy.copy.adopted': true });

    const won = byUpstream(workers, 'a');
    expect(won.attributes).toMatchObject({ 'redundant_proxy.update': true, 'redundant_proxy.commit': 'won' });
    const fence = won.attributes['redundant_proxy.fence'];
    expect(typeof fence).toBe('number');
    expect(won.events.map((e) => e.name)).toEqual(['claim', 'claimed', 'confirmed']);
    expect(won.events[1]!.attributes).toEqual({ 'redundant_proxy.fence': fence });
    expect(won.events[2]!.attributes).toEqual({ 'redundant_proxy.fence': fence });
    for (const lost of ['b', 'c']) {
      const w = byUpstream(workers, lost);
      expect(w.attributes).toMatchObject({ 'redundant_proxy.commit': 'lost', 'http.response.status_code': 409 });
      expect(w.attributes['redundant_proxy.fence']).toBeUndefined();
      expect(w.events.map((e) => e.name)).toEqual(['claim', 'lost']);
      expect(byUpstream(copies, lost).attributes['redundant_proxy.copy.adopted']).toBe(false);
      expect(parentOf(w)).toBe(id(byUpstream(copies, lost)));
    }
  });

  it('a client’s traceparent is the race span’s parent, and each copy carries its own span’s instead (tracestate kept), under a signature that still holds', async () => {
    const { gw, seen } = await fleet(async (_h, who) => ({ who }));
    const res = await client.send(`${gw.url}/items`, { headers: { traceparent: `00-${CLIENT_TRACE}-${CLIENT_SPAN}-01`, tracestate: 'vendor=x' } });
    expect(res.status).toBe(200);
    const { race, copies } = await raceSpans(String(res.headers['x-request-id']));
    expect(traceId(race)).toBe(CLIENT_TRACE);
    expect(parentOf(race)).toBe(CLIENT_SPAN);
    for (const copy of copies) {
      const upstream = copy.attributes['redundant_proxy.upstream.id'] as string;
      expect(seen.get(upstream)).toMatchObject({ traceparent: `00-${CLIENT_TRACE}-${id(copy)}-01`, tracestate: 'vendor=x' });
    }
  });

  it('HTTP instrumentation on both sides: the race is the gateway server span’s child, each worker span the replica server span’s', async () => {
    const { gw } = await fleet(async (_h, who) => ({ who }), { gateway: 'instrumented', replicas: 'instrumented' });
    const res = await client.send(`${gw.url}/items`, { headers: { traceparent: `00-${CLIENT_TRACE}-${CLIENT_SPAN}-01` } });
    expect(res.status).toBe(200);
    const { race, copies, workers } = await raceSpans(String(res.headers['x-request-id']));
    const servers = await eventually(() => {
      const spans = exporter.getFinishedSpans();
      const gateway = spans.find((s) => s.name === 'gateway');
      const replicas = spans.filter((s) => s.name.startsWith('replica '));
      return gateway && replicas.length === 3 ? { gateway, replicas } : undefined;
    });
    expect(parentOf(servers.gateway)).toBe(CLIENT_SPAN);
    expect(parentOf(race)).toBe(id(servers.gateway));
    for (const worker of workers) {
      const upstream = worker.attributes['redundant_proxy.upstream.id'] as string;
      const replica = servers.replicas.find((s) => s.name === `replica ${upstream}`)!;
      expect(worker.kind).toBe(api.SpanKind.INTERNAL);
      expect(parentOf(worker)).toBe(id(replica));
      expect(parentOf(replica)).toBe(id(byUpstream(copies, upstream)));
      expect(traceId(worker)).toBe(CLIENT_TRACE);
    }
  });
});
