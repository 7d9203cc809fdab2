import { afterAll, describe, expect, it } from '@jest/globals';
import { Emitter } from '../../lib/events.js';
import { Bookkeeping } from '../../lib/proxy/bookkeeping.js';
import { resolveOptions } from '../../lib/proxy/options.js';
import { PROXY_EVENTS, type ProxyEvents } from '../../lib/proxy/proxy-events.js';
import { MemorySessionStore } from '../../lib/store/memory.js';
import { REAL_TIME } from '../../lib/time.js';
import { sealId } from '../../lib/wire/protocol.js';

// An update's last word before it adopts an answer that did not commit: the
// proxy seals the request (claims and confirms it under its own id). A retry
// of an Idempotency-Key runs under the same request id: when the first
// attempt sealed it, nothing was applied and nothing can be, so the retry
// adopts its answer too, instead of being told "outcome unknown" forever.

const store = new MemorySessionStore();
afterAll(() => store.close());

function bookkeeping() {
  return new Bookkeeping(resolveOptions({ upstreams: [{ id: 'a', url: 'http://127.0.0.1:1' }], store }), REAL_TIME, new Emitter<ProxyEvents>(PROXY_EVENTS));
}

describe('sealing an update before adopting an answer that did not commit', () => {
  it('seals a request nobody committed, and lets the answer be adopted', async () => {
    await expect(bookkeeping().decideUpdate('r1', true)).resolves.toBeUndefined();
    expect((await store.getRequest('r1'))!.commit).toMatchObject({ state: 'committed', holder: sealId('r1') });
  });

  it('lets a retry of a request it sealed before adopt its answer: nothing was applied', async () => {
    const books = bookkeeping();
    await books.decideUpdate('r2', true);
    await expect(books.decideUpdate('r2', true)).resolves.toBeUndefined();
    await expect(bookkeeping().decideUpdate('r2', false)).resolves.toBeUndefined();
  });

  it('says applied, answer lost, when a copy committed', async () => {
    await store.recordCopy({ requestId: 'r3', duplicateId: 'd1', upstreamId: 'a', index: 1, of: 1, update: true, sessionId: '' });
    const grant = await store.claim('r3', 'd1', { leaseMs: 1000 });
    await store.confirm('r3', 'd1', grant.fence);
    const err = await bookkeeping().decideUpdate('r3', true);
    expect(err).toMatchObject({ code: 'RP_ERR_ANSWER_LOST', status: 502 });
  });

  it('says outcome unknown while a copy holds the claim', async () => {
    await store.claim('r4', 'd1', { leaseMs: 60_000 });
    const err = await bookkeeping().decideUpdate('r4', true);
    expect(err).toMatchObject({ code: 'RP_ERR_OUTCOME_UNKNOWN', status: 503 });
  });
});
