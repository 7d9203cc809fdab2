import { describe, expect, it } from '@jest/globals';
import { codes } from '../../lib/errors.js';
import type { SelectAnswer, SelectState } from '../../lib/proxy/options.js';
import { adoptionFor, FIRST_ACCEPTABLE, Quorum, SelectFunction, UpdateArbitration, type Judge } from '../../lib/proxy/race/adoption.js';

// The adoption strategies alone (pure logic: no sockets, no timers). A
// candidate is any object; the race passes its copies.

type C = { name: string };
const a: C = { name: 'a' };
const b: C = { name: 'b' };
const c: C = { name: 'c' };

/** accept(): status < 500; counts how often it is asked. */
function judge(): Judge<C> & { asked: number } {
  return {
    asked: 0,
    acceptable(_copy, status) {
      this.asked++;
      return status < 500;
    },
  };
}

const answer = (copy: C, status: number, body: string): SelectAnswer => ({ upstream: copy.name, index: 1, status, headers: {}, body: Buffer.from(body) });

describe('first acceptable (a read’s default)', () => {
  it('adopts an acceptable head at once and rejects the others; it holds and compares nothing', () => {
    const j = judge();
    expect(FIRST_ACCEPTABLE.head(a as never, 503, {}, j as never)).toBe('reject');
    expect(FIRST_ACCEPTABLE.head(b as never, 404, {}, j as never)).toBe('adopt');
    expect(j.asked).toBe(2);
    expect(FIRST_ACCEPTABLE.decide(0, 0)).toBeNull();
    expect(FIRST_ACCEPTABLE.lastSay()).toBeNull();
    expect([FIRST_ACCEPTABLE.burst, FIRST_ACCEPTABLE.quorum, FIRST_ACCEPTABLE.committed]).toEqual([1, 0, false]);
  });

  it('is one object for every race: choosing it allocates nothing', () => {
    expect(adoptionFor(false, { kind: 'first' }, 3)).toBe(FIRST_ACCEPTABLE);
    expect(adoptionFor(false, { kind: 'first' }, 1)).toBe(FIRST_ACCEPTABLE);
  });
});

describe('update arbitration (first committed wins)', () => {
  it('adopts the committed copy’s answer at once, whatever its status, without asking accept()', () => {
    const s = new UpdateArbitration<C>(3);
    const j = judge();
    expect(s.committed).toBe(false);
    expect(s.head(a, 500, { 'x-redundant-commit': 'won' }, j)).toBe('adopt');
    expect(s.committed).toBe(true);
    expect(j.asked).toBe(0);
  });

  it('never adopts a copy that lost the arbitration', () => {
    const s = new UpdateArbitration<C>(2);
    const j = judge();
    expect(s.head(a, 409, { 'x-redundant-commit': 'lost' }, j)).toBe('lost');
    expect(j.asked).toBe(0);
    expect(s.held).toEqual([]);
    expect(s.decide(0, 0)).toBeNull();
  });

  it('an answer that found the update applied by an earlier copy says so, and counts as committed', () => {
    const s = new UpdateArbitration<C>(2);
    expect(s.head(a, 200, { 'x-redundant-commit': 'applied' }, judge())).toBe('applied');
    expect(s.committed).toBe(true);
  });

  it('holds acceptable answers that did not commit until every copy sent has answered, then adopts the first', () => {
    const s = new UpdateArbitration<C>(3);
    const j = judge();
    expect(s.head(a, 400, {}, j)).toBe('hold');
    expect(s.head(b, 503, {}, j)).toBe('reject');
    expect(s.head(c, 422, {}, j)).toBe('hold');
    expect(s.held).toEqual([a, c]);
    expect(s.decide(1, 1)).toBeNull();
    expect(s.decide(0, 0)).toEqual({ adopt: a });
    // A held answer that broke is dropped: the next one is adopted.
    expect(s.drop(a)).toBe(true);
    expect(s.drop(a)).toBe(false);
    expect(s.decide(0, 0)).toEqual({ adopt: c });
  });

  it('a committed copy wins over held answers; a single copy is adopted without being held', () => {
    const s = new UpdateArbitration<C>(2);
    expect(s.head(a, 400, {}, judge())).toBe('hold');
    expect(s.head(b, 201, { 'x-redundant-commit': 'won' }, judge())).toBe('adopt');
    const one = new UpdateArbitration<C>(1);
    expect(one.head(a, 400, {}, judge())).toBe('adopt');
    expect(one.held).toEqual([]);
  });

  it('is what every update uses, whatever select says', () => {
    expect(adoptionFor(true, { kind: 'quorum', quorum: 2 }, 3)).toBeInstanceOf(UpdateArbitration);
    expect(adoptionFor(true, { kind: 'first' }, 3)).toBeInstanceOf(UpdateArbitration);
  });
});

describe('quorum', () => {
  it('reads acceptable answers whole; adopts the first of k alike; the others agreed or were outvoted', () => {
    const s = new Quorum<C>(2);
    expect([s.burst, s.quorum]).toEqual([2, 2]);
    expect(s.head(a, 200, {}, judge())).toBe('read');
    expect(s.head(b, 503, {}, judge())).toBe('reject');
    s.answer(a, answer(a, 200, 'x'));
    expect(s.decide(2, 2)).toBeNull();
    s.answer(b, answer(b, 200, 'y'));
    expect(s.agreeing()).toBe(1);
    expect(s.decide(1, 1)).toBeNull();
    s.answer(c, answer(c, 200, 'x'));
    expect(s.agreeing()).toBe(2);
    expect(s.decide(0, 0)).toEqual({ adopt: a });
    expect(s.agreed(c, a)).toBe(true);
    expect(s.agreed(b, a)).toBe(false);
    expect(s.answers).toEqual([a, b, c]);
  });

  it('the same body with another status is another answer', () => {
    const s = new Quorum<C>(2);
    s.answer(a, answer(a, 200, 'x'));
    s.answer(b, answer(b, 404, 'x'));
    expect(s.agreed(b, a)).toBe(false);
    expect(s.decide(1, 1)).toBeNull();
    s.answer(c, answer(c, 404, 'x'));
    expect(s.decide(0, 0)).toEqual({ adopt: b });
  });

  it('fails with RP_ERR_NO_QUORUM as soon as k can no longer agree, and not before', () => {
    const s = new Quorum<C>(3);
    s.answer(a, answer(a, 200, 'x'));
    s.answer(b, answer(b, 200, 'y'));
    // One more copy may answer: at most 2 alike.
    expect(s.decide(1, 1)).toMatchObject({ fail: codes.NO_QUORUM, message: expect.stringMatching(/no 3 copies .* 2 acceptable answers of 2 different kinds, most alike 1/) });
    const t = new Quorum<C>(3);
    t.answer(a, answer(a, 200, 'x'));
    t.answer(b, answer(b, 200, 'x'));
    expect(t.decide(1, 1)).toBeNull();
  });

  it('decides nothing before an answer is in, and has no last say at the timeout', () => {
    const s = new Quorum<C>(2);
    expect(s.decide(0, 0)).toBeNull();
    s.answer(a, answer(a, 200, 'x'));
    expect(s.lastSay()).toBeNull();
  });
});

describe('a select function', () => {
  it('is shown the answers as they come, with what is pending, until it chooses', () => {
    const calls: Array<{ bodies: string[]; state: SelectState }> = [];
    const s = new SelectFunction<C>((answers, state) => {
      calls.push({ bodies: answers.map((x) => x.body.toString()), state });
      return state.pending === 0 ? answers[1] : undefined;
    }, 3);
    expect(s.head(a, 200, {}, judge())).toBe('read');
    expect(s.decide(3, 3)).toBeNull(); // nothing to show yet: not asked
    s.answer(a, answer(a, 200, 'one'));
    expect(s.decide(2, 2)).toBeNull();
    s.answer(b, answer(b, 200, 'two'));
    expect(s.decide(0, 0)).toEqual({ adopt: b });
    expect(calls).toEqual([
      { bodies: ['one'], state: { pending: 2, copies: 3 } },
      { bodies: ['one', 'two'], state: { pending: 0, copies: 3 } },
    ]);
  });

  it('choosing none when nothing is pending fails with RP_ERR_NO_SELECTION; at the timeout, its last say may wait for the timeout', () => {
    const s = new SelectFunction<C>(() => undefined, 2);
    s.answer(a, answer(a, 200, 'x'));
    expect(s.decide(1, 1)).toBeNull();
    expect(s.decide(0, 0)).toMatchObject({ fail: codes.NO_SELECTION, message: expect.stringMatching(/chose none of the 1/) });
    expect(s.lastSay()).toBeNull();
  });

  it('a function that throws, or returns something it was not given, fails the selection and is reported', () => {
    const boom = new Error('boom');
    const threw = new SelectFunction<C>(() => {
      throw boom;
    }, 2);
    threw.answer(a, answer(a, 200, 'x'));
    expect(threw.decide(1, 1)).toEqual({ fail: codes.NO_SELECTION, message: 'the select function threw', error: boom });
    const stranger = new SelectFunction<C>((answers) => ({ ...answers[0]! }), 2);
    stranger.answer(a, answer(a, 200, 'x'));
    const d = stranger.decide(1, 1);
    expect(d).toMatchObject({ fail: codes.NO_SELECTION, error: expect.any(TypeError) });
  });

  it('its last say at the timeout asks with nothing pending', () => {
    const seen: number[] = [];
    const s = new SelectFunction<C>((answers, { pending }) => {
      seen.push(pending);
      return answers[0];
    }, 3);
    expect(s.lastSay()).toBeNull(); // no answers: not asked
    s.answer(c, answer(c, 200, 'x'));
    expect(s.lastSay()).toEqual({ adopt: c });
    expect(seen).toEqual([0]);
  });
});
