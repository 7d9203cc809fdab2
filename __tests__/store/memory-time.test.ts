import { describe, expect, it } from '@jest/globals';
import { isSupersededError } from '../../lib/errors.js';
import { MemorySessionStore } from '../../lib/store/memory.js';
import { withScheduler, type Scheduler } from '../../lib/time.js';
import { VirtualTime } from '../helpers/virtual-time.js';

// The memory store's leases on an injected clock AND timer scheduler: a
// waiting claim is granted when the holder's lease runs out on the virtual
// clock, at that moment and not before, with no real time passing.

describe('MemorySessionStore on a virtual scheduler', () => {
  it('grants a waiting claim exactly when the holder’s lease runs out', async () => {
    const time = new VirtualTime(1_000);
    const store = new MemorySessionStore(withScheduler({}, time));
    try {
      const first = await store.claim('r', 'a', { leaseMs: 500 });
      let granted: number | null = null;
      const waiting = store.claim('r', 'b', { leaseMs: 500 }).then((g) => {
        granted = time.now();
        return g;
      });
      await time.advance(499);
      expect(granted).toBeNull();
      await time.advance(1);
      const second = await waiting;
      expect(granted).toBe(1_500);
      expect(second.fence).toBeGreaterThan(first.fence);
      expect(time.pending).toBe(0);
    } finally {
      await store.close();
    }
  });

  it('a lease longer than a timer can wait (2^31 - 1 ms) is waited for in steps, not with a timer that fires at once', async () => {
    const time = new VirtualTime(0);
    const delays: number[] = [];
    // Node fires a longer timer at once; the virtual one would not, so the delays asked for are what is checked.
    const scheduler: Scheduler = {
      now: () => time.now(),
      setTimeout: (fn, ms) => {
        delays.push(ms);
        return time.setTimeout(fn, ms);
      },
      clearTimeout: (handle) => time.clearTimeout(handle),
      setImmediate: (fn) => time.setImmediate(fn),
    };
    const store = new MemorySessionStore(withScheduler({ ttl: 4e9 }, scheduler));
    try {
      await store.claim('r', 'a', { leaseMs: 3e9 });
      let granted = false;
      const waiting = store.claim('r', 'b', { leaseMs: 1000 }).then(() => (granted = true));
      await time.advance(2 ** 31 - 1);
      expect(granted).toBe(false);
      await time.advance(3e9 - (2 ** 31 - 1));
      await waiting;
      expect(delays).toEqual([2 ** 31 - 1, 3e9 - (2 ** 31 - 1)]);
    } finally {
      await store.close();
    }
  });

  it('keeps a request whose claim’s lease outlasts the record TTL: no other copy can claim it meanwhile', async () => {
    const time = new VirtualTime(0);
    const store = new MemorySessionStore(withScheduler({ ttl: 1_000 }, time));
    try {
      const first = await store.claim('r', 'a', { leaseMs: 5_000 });
      await time.advance(2_000);
      // Another copy's record (a write that is not a claim) does not shorten it either.
      await store.recordCopy({ requestId: 'r', duplicateId: 'r.2', upstreamId: 'b', index: 2, of: 2, update: true, sessionId: '' });
      await time.advance(1_500);
      let granted = false;
      const waiting = store.claim('r', 'b', { leaseMs: 5_000 }).then((g) => ((granted = true), g));
      await time.advance(1_000);
      expect(granted).toBe(false);
      expect((await store.getRequest('r'))?.commit).toMatchObject({ state: 'claimed', holder: 'a', fence: first.fence });
      await time.advance(600);
      expect((await waiting).fence).toBeGreaterThan(first.fence);
    } finally {
      await store.close();
    }
  });

  it('turns a waiter away at once when the holder confirms, leaving no timer', async () => {
    const time = new VirtualTime();
    const store = new MemorySessionStore(withScheduler({}, time));
    try {
      const grant = await store.claim('r', 'a', { leaseMs: 10_000 });
      const waiting = store.claim('r', 'b', { leaseMs: 10_000 }).then(
        () => 'granted',
        (err: unknown) => (isSupersededError(err) ? 'superseded' : String(err)),
      );
      expect(time.pending).toBe(1);
      await store.confirm('r', 'a', grant.fence);
      expect(await waiting).toBe('superseded');
      expect(time.pending).toBe(0);
    } finally {
      await store.close();
    }
  });

  it('keeps an explicit `now` over the scheduler’s clock', async () => {
    const time = new VirtualTime(0);
    const store = new MemorySessionStore(withScheduler({ now: () => 50_000 }, time));
    try {
      const grant = await store.claim('r', 'a', { leaseMs: 100 });
      expect(grant.leaseUntil).toBe(50_100);
    } finally {
      await store.close();
    }
  });
});
