import { MemorySessionStore } from '../../lib/store/memory.js';
import type { Closable, CommitArbiter, IdempotencyStore, RequestLog, SessionState } from '../../lib/store/types.js';
import { conformance } from '../../lib/testing.js';

// The conformance suite one role at a time: each role's tests run against an
// object that has only that role's methods (and close), so a role's tests
// can never lean on another role's methods unnoticed.

/** A view of a fresh memory store with only the named methods. */
function only<S>(...methods: Array<keyof S & string>): () => S & Closable {
  return () => {
    const store = new MemorySessionStore();
    const view: Record<string, unknown> = { close: () => store.close() };
    for (const m of methods) view[m] = (store[m as keyof MemorySessionStore] as (...a: unknown[]) => unknown).bind(store);
    return view as S & Closable;
  };
}

conformance.requestLog(only<RequestLog>('recordCopy', 'recordAdoption', 'recordCancelled', 'getRequest'), { name: 'request log alone' });
conformance.sessionState(only<SessionState>('saveCandidate', 'recordAdoption', 'getSession'), { name: 'session state alone' });
conformance.commitArbitration(only<CommitArbiter & Pick<RequestLog, 'getRequest'>>('claim', 'confirm', 'release', 'getRequest'), { name: 'commit arbitration alone' });
conformance.idempotency(only<IdempotencyStore>('beginIdempotent', 'completeIdempotent'), { name: 'idempotency alone' });
