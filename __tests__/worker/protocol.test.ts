import { describe, expect, it } from '@jest/globals';
import { ANSWER_HEADERS, CLIENT_HEADERS, COMMIT, commitState, FLAG_OFF, FLAG_ON, H, PREFIX, REQUEST_HEADERS } from '../../lib/wire/protocol.js';

// The wire protocol between proxies and workers of different versions: its
// names and values are a contract, written down here once more so that a
// change to one of them is a decision, not an accident.

describe('the wire protocol', () => {
  it('names the request headers the proxy sets on each copy', () => {
    expect(REQUEST_HEADERS).toEqual({
      requestId: 'x-redundant-request-id',
      duplicateId: 'x-redundant-duplicate-id',
      upstream: 'x-redundant-upstream',
      copy: 'x-redundant-copy',
      update: 'x-redundant-update',
      session: 'x-redundant-session',
      sessionNew: 'x-redundant-session-new',
      timestamp: 'x-redundant-timestamp',
      signature: 'x-redundant-signature',
      bodyHash: 'x-redundant-body-sha256',
      idempotency: 'x-redundant-idempotency',
    });
  });

  it('names the answer headers of the worker (and the proxy\'s served-by), with the states of the commit', () => {
    expect(ANSWER_HEADERS).toEqual({
      worker: 'x-redundant-worker',
      commit: 'x-redundant-commit',
      fence: 'x-redundant-fence',
      sessionChanged: 'x-redundant-session-changed',
      refused: 'x-redundant-refused',
      storeUnavailable: 'x-redundant-store-unavailable',
      servedBy: 'x-redundant-served-by',
    });
    expect(COMMIT).toEqual({ won: 'won', applied: 'applied', lost: 'lost' });
    expect([FLAG_ON, FLAG_OFF]).toEqual(['1', '0']);
    expect(CLIENT_HEADERS).toEqual({ requestId: 'x-request-id', idempotencyKey: 'idempotency-key', replayed: 'idempotent-replayed' });
  });

  it('holds both directions in H, every name under the prefix the proxy strips from clients', () => {
    expect(H).toEqual({ ...REQUEST_HEADERS, ...ANSWER_HEADERS });
    expect(Object.keys(H)).toHaveLength(Object.keys(REQUEST_HEADERS).length + Object.keys(ANSWER_HEADERS).length);
    for (const name of Object.values(H)) expect(name.startsWith(PREFIX)).toBe(true);
  });

  it('reads a commit state from a header, and nothing else as one', () => {
    expect(commitState('won')).toBe('won');
    expect(commitState('applied')).toBe('applied');
    expect(commitState('lost')).toBe('lost');
    expect(commitState('WON')).toBeUndefined();
    expect(commitState(['won'])).toBeUndefined();
    expect(commitState(undefined)).toBeUndefined();
  });
});
