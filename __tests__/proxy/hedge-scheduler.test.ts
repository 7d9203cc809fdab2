import { describe, expect, it } from '@jest/globals';
import { HedgeBudget } from '../../lib/proxy/hedge.js';
import { HedgeScheduler, type HedgeHost, type HedgeTokens } from '../../lib/proxy/race/hedging.js';
import type { Upstream } from '../../lib/proxy/options.js';
import type { Scheduler } from '../../lib/time.js';
import { earlyTimers, VirtualTime } from '../helpers/virtual-time.js';

// The hedge scheduler alone, on a virtual clock: what leaves when. The host
// stands for the race: it records when each copy left.

class Host implements HedgeHost {
  sent: Array<{ at: number; hedged: boolean }> = [];
  decided = false;
  finished = false;
  holding = false;
  /** Upstreams not tried yet, offered as spares; those planned. */
  spares: Upstream[] = [];
  planned: string[] = [];
  constructor(
    public copies: number,
    readonly time: Scheduler,
  ) {}
  spareUpstream(): Upstream | null {
    return this.spares[0] ?? null;
  }
  planCopy(upstream: Upstream): void {
    this.spares.shift();
    this.planned.push(upstream.id);
    this.copies++;
  }
  unsent(): number {
    return this.copies - this.sent.length;
  }
  sendNext(hedged: boolean): void {
    this.sent.push({ at: this.time.now(), hedged });
  }
  isFinished(): boolean {
    return this.finished;
  }
  isDecided(): boolean {
    return this.decided || this.finished;
  }
  holdsHedges(): boolean {
    return this.holding;
  }
}

const always: HedgeTokens = { take: () => true };

function setup(copies: number, delay: number, { budget = always, burst = 1, time }: { budget?: HedgeTokens; burst?: number; time?: Scheduler } = {}) {
  const vt = new VirtualTime();
  const clock = time ?? vt;
  const host = new Host(copies, clock);
  const scheduler = new HedgeScheduler(host, clock, delay, budget, burst);
  return { vt, host, scheduler };
}

const at = (host: Host) => host.sent.map((s) => s.at);

describe('the hedge scheduler', () => {
  it('without a delay, every copy leaves at once and no timer is set', () => {
    const { vt, host, scheduler } = setup(3, 0);
    scheduler.start();
    expect(host.sent).toEqual([
      { at: 0, hedged: false },
      { at: 0, hedged: false },
      { at: 0, hedged: false },
    ]);
    expect(vt.pending).toBe(0);
  });

  it('with a delay, one copy leaves, then one more each delay, marked hedged, until none is left', () => {
    const { vt, host, scheduler } = setup(3, 50);
    scheduler.start();
    expect(at(host)).toEqual([0]);
    vt.advanceSync(49.9);
    expect(at(host)).toEqual([0]);
    vt.advanceSync(0.1);
    expect(at(host)).toEqual([0, 50]);
    vt.advanceSync(1000);
    expect(host.sent).toEqual([
      { at: 0, hedged: false },
      { at: 50, hedged: true },
      { at: 100, hedged: true },
    ]);
    expect(vt.pending).toBe(0);
  });

  it('a quorum’s k copies leave at once, the rest as hedges', () => {
    const { vt, host, scheduler } = setup(3, 20, { burst: 2 });
    scheduler.start();
    expect(at(host)).toEqual([0, 0]);
    vt.advanceSync(20);
    expect(at(host)).toEqual([0, 0, 20]);
  });

  it('no hedge leaves once the race is decided', () => {
    const { vt, host, scheduler } = setup(3, 50);
    scheduler.start();
    vt.advanceSync(10);
    host.decided = true;
    vt.advanceSync(1000);
    expect(at(host)).toEqual([0]);
  });

  it('stop() disarms the hedge', () => {
    const { vt, host, scheduler } = setup(3, 50);
    scheduler.start();
    expect(scheduler.armed).toBe(true);
    scheduler.stop();
    expect(scheduler.armed).toBe(false);
    vt.advanceSync(1000);
    expect(at(host)).toEqual([0]);
  });

  it('an adaptive delay that knows nothing yet (Infinity) sends no hedge and sets no timer', () => {
    const { vt, host, scheduler } = setup(3, Infinity);
    scheduler.start();
    expect(at(host)).toEqual([0]);
    expect(vt.pending).toBe(0);
  });

  it('the budget is asked before each hedge: when it is spent, nothing more leaves', () => {
    const budget = new HedgeBudget(0.01); // a burst of one hedge
    const { vt, host, scheduler } = setup(3, 10, { budget });
    scheduler.start();
    vt.advanceSync(100);
    expect(host.sent).toEqual([
      { at: 0, hedged: false },
      { at: 10, hedged: true },
    ]);
    expect(vt.pending).toBe(0);
  });

  it('a copy that replaces a failed one leaves at once, outside the budget, and the delay starts again', () => {
    const { vt, host, scheduler } = setup(3, 50, { budget: { take: () => false } });
    scheduler.start();
    vt.advanceSync(30);
    scheduler.replaceFailed();
    expect(host.sent).toEqual([
      { at: 0, hedged: false },
      { at: 30, hedged: false },
    ]);
    // The delay runs from 30: at 79.9 nothing; at 80 the budget refuses the hedge.
    vt.advanceSync(49.9);
    expect(at(host)).toEqual([0, 30]);
    expect(scheduler.armed).toBe(true);
    vt.advanceSync(0.1);
    expect(scheduler.armed).toBe(false);
  });

  it('held back while the copies out are still bringing their answers in: looked at again a delay later', () => {
    const { vt, host, scheduler } = setup(3, 20, { burst: 2 });
    scheduler.start();
    host.holding = true;
    vt.advanceSync(20);
    expect(at(host)).toEqual([0, 0]);
    host.holding = false;
    vt.advanceSync(19);
    expect(at(host)).toEqual([0, 0]);
    vt.advanceSync(1);
    expect(at(host)).toEqual([0, 0, 40]);
  });

  it('never sends a hedge before its delay on timers that fire early, as Node’s may', () => {
    for (const start of [0, 0.25, 0.5, 0.99, 3.7]) {
      const vt = new VirtualTime(start);
      const timers = earlyTimers(vt);
      const host = new Host(2, timers);
      new HedgeScheduler(host, timers, 5.9, always, 1).start();
      vt.advanceSync(20);
      expect(host.sent[1]!.at - start).toBeGreaterThanOrEqual(5.85);
      expect(host.sent[1]!.at - start).toBeLessThanOrEqual(7);
    }
  });

  it('does not wait forever on a clock that stands still while its timers fire', () => {
    const vt = new VirtualTime();
    // Timers that fire but a clock that never moves.
    const frozen: Scheduler = { now: () => 0, setTimeout: (fn, ms) => vt.setTimeout(fn, ms), clearTimeout: (h) => vt.clearTimeout(h), setImmediate: (fn) => vt.setImmediate(fn) };
    const host = new Host(2, frozen);
    new HedgeScheduler(host, frozen, 10, always, 1).start();
    for (let i = 0; i < 5 && host.sent.length < 2; i++) vt.step();
    expect(host.sent).toHaveLength(2);
  });

  it('a synchronous failure of the first copy, replaced while starting, leaves one hedge timer, not two', () => {
    const vt = new VirtualTime();
    const host = new Host(3, vt);
    const scheduler = new HedgeScheduler(host, vt, 50, always, 1);
    const send = host.sendNext.bind(host);
    let first = true;
    host.sendNext = (hedged) => {
      send(hedged);
      if (first) {
        first = false;
        scheduler.replaceFailed();
      }
    };
    scheduler.start();
    expect(at(host)).toEqual([0, 0]);
    expect(vt.pending).toBe(1);
  });
});

describe('replacing a copy given up at its per-try timeout', () => {
  const spare = { id: 'spare' } as Upstream;

  it('sends the next planned copy at once when one is left, taking a token', () => {
    let tokens = 1;
    const { host, scheduler } = setup(3, 0, { budget: { take: () => tokens-- > 0 } });
    scheduler.replaceGivenUp();
    expect(host.sent).toHaveLength(1);
    expect(host.planned).toEqual([]);
    scheduler.replaceGivenUp(); // no token left
    expect(host.sent).toHaveLength(1);
  });

  it('plans a copy to a spare upstream when none is left, only if a token allows it', () => {
    const { host, scheduler } = setup(0, 0, { budget: { take: () => false } });
    host.spares = [spare];
    scheduler.replaceGivenUp();
    expect(host.planned).toEqual([]);
    expect(host.sent).toHaveLength(0);
    const ok = setup(0, 0);
    ok.host.spares = [spare];
    ok.scheduler.replaceGivenUp();
    expect(ok.host.planned).toEqual(['spare']);
    expect(ok.host.sent).toHaveLength(1);
  });

  it('takes no token when there is neither a planned copy nor a spare', () => {
    let taken = 0;
    const { host, scheduler } = setup(0, 0, { budget: { take: () => (taken++, true) } });
    scheduler.replaceGivenUp();
    expect(taken).toBe(0);
    expect(host.sent).toHaveLength(0);
  });
});
