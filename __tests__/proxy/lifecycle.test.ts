import { describe, expect, it } from '@jest/globals';
import { isLegalTransition, transition, type CopyState } from '../../lib/proxy/lifecycle.js';

// The table of a copy's legal moves (pure logic). The race moves copies only
// through `transition()`, so every race test also checks that the race makes
// no move the table does not allow: under jest an illegal move throws.

const STATES: CopyState[] = ['idle', 'sent', 'lingering', 'holding', 'streaming', 'collecting', 'buffering', 'draining', 'done'];

describe('a copy’s lifecycle', () => {
  it('every state can end: stopping, failing or finishing leads to done', () => {
    for (const s of STATES) expect([s, isLegalTransition(s, 'done')]).toEqual([s, true]);
  });

  it('nothing comes back from done, and nothing goes back to idle or sent', () => {
    for (const s of STATES) {
      if (s !== 'done') expect([s, isLegalTransition('done', s)]).toEqual([s, false]);
      expect([s, isLegalTransition(s, 'idle')]).toEqual([s, false]);
      if (s !== 'idle') expect([s, isLegalTransition(s, 'sent')]).toEqual([s, false]);
    }
  });

  it('only an answered copy streams to the client, and only the body of one being compared is held as a whole', () => {
    expect(STATES.filter((s) => isLegalTransition(s, 'streaming')).sort()).toEqual(['holding', 'sent']);
    expect(STATES.filter((s) => isLegalTransition(s, 'buffering'))).toEqual(['sent']);
    expect(isLegalTransition('lingering', 'streaming')).toBe(false);
    expect(isLegalTransition('draining', 'streaming')).toBe(false);
  });

  it('an illegal move throws under test, naming it', () => {
    expect(() => transition('done', 'streaming')).toThrow('illegal copy transition done → streaming');
    expect(transition('sent', 'holding')).toBe('holding');
  });
});
