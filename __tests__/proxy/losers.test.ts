import { describe, expect, it } from '@jest/globals';
import type { Dispatcher } from 'undici';
import type { CopyState } from '../../lib/proxy/lifecycle.js';
import type { CopyOutcome } from '../../lib/proxy/report.js';
import { Copy, type CopyHost } from '../../lib/proxy/race/copy.js';
import { LoserPolicy, LOSERS } from '../../lib/proxy/race/losers.js';

// The loser policy alone: whether a loser is drained or aborted, and how
// long one still out may take to answer. A copy here is the real handler
// with a controller that records what was done to it.

function copyIn(state: CopyState, headers: Record<string, string> = {}) {
  const copy = new Copy({} as CopyHost, { id: 'u', label: 'u', origin: 'http://127.0.0.1', prefix: '', url: 'http://127.0.0.1' } as never, {
    index: 1,
    upstream: 'u',
    duplicateId: 'r.1',
    outcome: 'stopped',
    sentAt: 0,
    latency: null,
    status: null,
    error: null,
    hedged: false,
  });
  let aborted = false;
  copy.controller = { abort: () => void (aborted = true), pause() {}, resume() {} } as unknown as Dispatcher.DispatchController;
  const path: Record<CopyState, CopyState[]> = {
    idle: [],
    sent: ['sent'],
    lingering: ['sent', 'lingering'],
    holding: ['sent', 'holding'],
    streaming: ['sent', 'streaming'],
    collecting: ['sent', 'collecting'],
    buffering: ['sent', 'buffering'],
    draining: ['sent', 'draining'],
    done: ['done'],
  };
  for (const s of path[state]) copy.to(s);
  copy.headers = headers;
  copy.chunks = [Buffer.from('kept')];
  return { copy, aborted: () => aborted };
}

const small = { 'content-length': String(64 * 1024) };
const large = { 'content-length': String(64 * 1024 + 1) };

describe('the loser policy', () => {
  it('drains an answer of known length up to 64 KiB; aborts a larger one, or one of unknown length', () => {
    expect(LOSERS.drains(small)).toBe(true);
    expect(LOSERS.drains(large)).toBe(false);
    expect(LOSERS.drains({})).toBe(false);
    expect(LOSERS.drains({ 'transfer-encoding': 'chunked' })).toBe(false);
    expect(new LoserPolicy(10).drains({ 'content-length': '11' })).toBe(false);
  });

  it('gives the losers still out half the race so far to answer, between 2 and 10 ms', () => {
    expect([0, 3, 4, 10, 19, 20, 100].map((ms) => LOSERS.grace(ms))).toEqual([2, 2, 2, 5, 9.5, 10, 10]);
  });

  it('stops a copy wherever it stands, and says so in its report', () => {
    const cases: Array<[CopyState, Record<string, string>, CopyState, boolean, CopyOutcome]> = [
      // state, headers, then: state, aborted, outcome
      ['sent', {}, 'done', true, 'stopped'],
      ['lingering', {}, 'done', true, 'stopped'],
      ['collecting', small, 'draining', false, 'rejected'],
      ['collecting', large, 'done', true, 'rejected'],
      ['buffering', small, 'draining', false, 'drained'],
      ['buffering', large, 'done', true, 'stopped'],
      ['holding', small, 'done', true, 'stopped'],
      ['streaming', small, 'done', true, 'stopped'],
      ['draining', small, 'draining', false, 'stopped'],
      ['done', {}, 'done', false, 'stopped'],
    ];
    for (const [state, headers, after, abort, outcome] of cases) {
      const { copy, aborted } = copyIn(state, headers);
      LOSERS.stop(copy);
      expect([state, copy.state, aborted(), copy.report.outcome]).toEqual([state, after, abort, outcome]);
      if (state === 'collecting' || state === 'buffering') expect(copy.chunks).toEqual([]);
    }
  });

  it('a loser answering within its grace is drained if small (`lost` for an update’s), else stopped; it did answer, so it is not marked timeout', () => {
    const lost = copyIn('lingering', small);
    lost.copy.report.error = 'timeout';
    LOSERS.answeredInGrace(lost.copy, { ...small, 'x-redundant-commit': 'lost' });
    expect([lost.copy.state, lost.copy.report.outcome, lost.copy.report.error, lost.aborted()]).toEqual(['draining', 'lost', null, false]);
    const read = copyIn('lingering', small);
    LOSERS.answeredInGrace(read.copy, small);
    expect([read.copy.state, read.copy.report.outcome]).toEqual(['draining', 'drained']);
    const big = copyIn('lingering', large);
    LOSERS.answeredInGrace(big.copy, { ...large, 'x-redundant-commit': 'lost' });
    expect([big.copy.state, big.copy.report.outcome, big.aborted()]).toEqual(['done', 'lost', true]);
  });

  it('a loser answering after the race was decided is drained if small, else stopped', () => {
    const s = copyIn('sent', small);
    LOSERS.answeredLate(s.copy, small);
    expect([s.copy.state, s.copy.report.outcome, s.aborted()]).toEqual(['draining', 'drained', false]);
    const l = copyIn('sent', large);
    LOSERS.answeredLate(l.copy, large);
    expect([l.copy.state, l.copy.report.outcome, l.aborted()]).toEqual(['done', 'stopped', true]);
  });
});
