import { afterAll, describe, expect, it, jest } from '@jest/globals';
import { closeAfterEach } from '../helpers/cleanup.js';
import { testClient } from '../helpers/client.js';
import { listen } from '../helpers/upstream.js';

// An application without @opentelemetry/api: the library loads and works.
// Its require of the API is made to throw, as it does when the package is
// not installed; the library is imported only after that.

jest.mock('@opentelemetry/api', () => {
  throw Object.assign(new Error("Cannot find module '@opentelemetry/api'"), { code: 'MODULE_NOT_FOUND' });
});

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

describe('without @opentelemetry/api', () => {
  it('the loader gives null for a require that throws, or for a module that is not the API', async () => {
    const { loadTracing } = await import('../../lib/tracing.js');
    expect(
      loadTracing(() => {
        throw new Error('Cannot find module');
      }),
    ).toBeNull();
    expect(loadTracing(() => ({}))).toBeNull();
    expect(loadTracing(() => undefined)).toBeNull();
    // The real API, through a require that jest's mock does not reach.
    const api = loadTracing((id) => jest.requireActual(id));
    expect(api).not.toBeNull();
    expect(typeof api!.trace.getTracer).toBe('function');
  });

  it('the library loads, and a request raced to a worker is answered', async () => {
    const { OTEL } = await import('../../lib/tracing.js');
    expect(OTEL).toBeNull();
    const { MemorySessionStore, redundantProxy, redundantWorker } = await import('../../lib/index.js');
    const store = new MemorySessionStore();
    open.push(store);
    const worker = redundantWorker({ id: 'a', store, secret: 'missing-api-secret-0123' });
    const replica = await listen((req, res) =>
      worker(req, res, () => {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ traceparent: req.headers.traceparent ?? null }));
      }),
    );
    open.push(replica);
    const proxy = redundantProxy({ upstreams: [{ id: 'a', url: replica.url }], store, secret: 'missing-api-secret-0123' });
    const gw = await listen(proxy.handler);
    open.push(gw, proxy);
    const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
    const res = await client.send(`${gw.url}/x`, { headers: { traceparent } });
    expect(res.status).toBe(200);
    // Passed through as any other header.
    expect(res.json()).toEqual({ traceparent });
  });
});
