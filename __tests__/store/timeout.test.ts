import { describe, expect, it, jest } from '@jest/globals';
import { codes } from '../../lib/errors.js';
import { TimeoutGroup, withTimeout } from '../../lib/timeout.js';

const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
const never = () => new Promise<never>(() => undefined);

describe('withTimeout', () => {
  it('passes a settled value or error through and clears its timer', async () => {
    const before = timers();
    await expect(withTimeout(Promise.resolve(7), 1000, 'x')).resolves.toBe(7);
    await expect(withTimeout(Promise.reject(new Error('no')), 1000, 'x')).rejects.toThrow('no');
    expect(timers()).toBe(before);
  });

  it('rejects with RP_ERR_STORE_UNAVAILABLE past the bound, and a late rejection stays handled', async () => {
    let rejectLate!: (e: Error) => void;
    const late = new Promise<never>((_, reject) => (rejectLate = reject));
    await expect(withTimeout(late, 20, 'getRequest')).rejects.toMatchObject({ code: codes.STORE_UNAVAILABLE, message: expect.stringMatching(/getRequest within 20 ms/) });
    rejectLate(new Error('too late'));
    await new Promise((r) => setImmediate(r));
  });
});

describe('TimeoutGroup (one timer for many off-path operations)', () => {
  it('passes settled operations through', async () => {
    const group = new TimeoutGroup(1000);
    await expect(group.track(Promise.resolve('a'), 'x')).resolves.toBe('a');
    await expect(group.track(Promise.reject(new Error('b')), 'x')).rejects.toThrow('b');
    group.close();
  });

  it('rejects an operation still pending past the bound', async () => {
    const group = new TimeoutGroup(40);
    const t0 = performance.now();
    const err = await group.track(never(), 'recordAdoption').catch((e: unknown) => e);
    const waited = performance.now() - t0;
    expect(err).toMatchObject({ code: codes.STORE_UNAVAILABLE, message: expect.stringMatching(/recordAdoption within 40 ms/) });
    expect(waited).toBeGreaterThanOrEqual(39);
    group.close();
  });

  it('rejects each operation once, and none before its own bound', async () => {
    const group = new TimeoutGroup(40);
    const settledAfter = (p: Promise<unknown>, from: number) => p.then(
      () => ({ ok: true, after: performance.now() - from }),
      (e: unknown) => ({ ok: false, error: e, after: performance.now() - from }),
    );
    const t1 = performance.now();
    const first = settledAfter(group.track(never(), 'first'), t1);
    await new Promise((r) => setTimeout(r, 25));
    const t2 = performance.now();
    const second = settledAfter(group.track(never(), 'second'), t2);
    const [a, b] = await Promise.all([first, second]);
    expect(a).toMatchObject({ ok: false, error: { code: codes.STORE_UNAVAILABLE } });
    expect(b).toMatchObject({ ok: false, error: { code: codes.STORE_UNAVAILABLE } });
    expect(a.after).toBeGreaterThanOrEqual(39);
    expect(b.after).toBeGreaterThanOrEqual(39);
    group.close();
  });

  it('uses one timer however many operations, stops it once they are settled, and close() stops it at once', async () => {
    const arm = jest.spyOn(globalThis, 'setInterval');
    const disarm = jest.spyOn(globalThis, 'clearInterval');
    try {
      const group = new TimeoutGroup(20);
      const resolvers: Array<() => void> = [];
      const ops = Array.from({ length: 100 }, () => group.track(new Promise<void>((r) => resolvers.push(r)), 'x'));
      expect(arm).toHaveBeenCalledTimes(1);
      for (const r of resolvers) r();
      await Promise.all(ops);
      // The next sweep finds nothing pending and stops the timer.
      await new Promise((r) => setTimeout(r, 30));
      expect(disarm).toHaveBeenCalledTimes(1);
      // A new operation starts it again, and close() stops it.
      void group.track(never(), 'x').catch(() => undefined);
      expect(arm).toHaveBeenCalledTimes(2);
      group.close();
      expect(disarm).toHaveBeenCalledTimes(2);
    } finally {
      arm.mockRestore();
      disarm.mockRestore();
    }
  });
});
