import type { IncomingMessage } from 'node:http';
import { afterAll, describe, expect, it } from '@jest/globals';
import * as api from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { AlwaysOffSampler, BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { MemorySessionStore, redundantProxy, redundantWorker } from '../../lib/index.js';
import { RaceTrace } from '../../lib/proxy/tracing.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { testClient } from '../helpers/client.js';
import { listen } from '../helpers/upstream.js';

// The API installed, but nothing registered (no SDK): the requests are
// served as without the API, and the proxy does nothing for them. Then a
// provider that samples nothing: nothing is recorded, and a sampled-out trace
// still passes its decision on.

const SECRET = 'tracing-off-secret-0123456789';
const CLIENT_TRACE = '0af7651916cd43dd8448eb211c80319c';
const CLIENT_PARENT = `00-${CLIENT_TRACE}-b7ad6b7169203331-01`;

const exporter = new InMemorySpanExporter();
const sampledOut = new BasicTracerProvider({ sampler: new AlwaysOffSampler(), spanProcessors: [new SimpleSpanProcessor(exporter)] });
const client = testClient();
const open = closeAfterEach();

afterAll(async () => {
  await client.close();
  await sampledOut.shutdown();
  api.trace.disable();
  api.propagation.disable();
  api.context.disable();
});

/** A worker replica that answers with the trace headers it received and the span its handler ran in. */
async function fleet() {
  const store = new MemorySessionStore();
  open.push(store);
  const worker = redundantWorker({ id: 'a', store, secret: SECRET });
  const replica = await listen((req, res) =>
    worker(req, res, () => {
      res.setHeader('content-type', 'application/json');
      const active = api.trace.getActiveSpan()?.spanContext();
      res.end(JSON.stringify({ traceparent: req.headers.traceparent ?? null, tracestate: req.headers.tracestate ?? null, active: active ? `${active.traceId}-${active.spanId}-${active.traceFlags}` : null }));
    }),
  );
  open.push(replica);
  const proxy = redundantProxy({ upstreams: [{ id: 'a', url: replica.url }], store, secret: SECRET });
  const gw = await listen(proxy.handler);
  open.push(gw, proxy);
  return gw;
}

describe('tracing off', () => {
  it('no SDK: the race has no trace, a client’s trace headers pass untouched, none are added to a request without them', async () => {
    const headers = ['traceparent', CLIENT_PARENT];
    const req = { headers: { traceparent: CLIENT_PARENT } } as unknown as IncomingMessage;
    expect(RaceTrace.start(req, { requestId: 'r', method: 'GET', path: '/x', update: false, planned: 1 }, headers)).toBeNull();
    expect(headers).toEqual(['traceparent', CLIENT_PARENT]);

    const gw = await fleet();
    const traced = await client.send(`${gw.url}/x`, { headers: { traceparent: CLIENT_PARENT, tracestate: 'vendor=x' } });
    expect(traced.status).toBe(200);
    expect(traced.json()).toMatchObject({ traceparent: CLIENT_PARENT, tracestate: 'vendor=x' });
    const plain = await client.send(`${gw.url}/y`);
    expect(plain.status).toBe(200);
    expect(plain.json()).toEqual({ traceparent: null, tracestate: null, active: null });
  });

  it('a provider that samples nothing: nothing recorded, and each copy carries the race’s trace with the decision not to sample', async () => {
    api.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    api.propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    api.trace.setGlobalTracerProvider(sampledOut);
    const gw = await fleet();
    const res = await client.send(`${gw.url}/x`, { headers: { traceparent: CLIENT_PARENT } });
    expect(res.status).toBe(200);
    const seen = res.json() as { traceparent: string; active: string };
    // The client's trace, a span id of the proxy's, not sampled.
    expect(seen.traceparent).toMatch(new RegExp(`^00-${CLIENT_TRACE}-[0-9a-f]{16}-00$`));
    expect(seen.traceparent).not.toBe(CLIENT_PARENT);
    // The handler runs in the worker's (non-recording) span, within that trace.
    expect(seen.active).toMatch(new RegExp(`^${CLIENT_TRACE}-[0-9a-f]{16}-0$`));
    await sampledOut.forceFlush();
    expect(exporter.getFinishedSpans()).toEqual([]);
  });
});
