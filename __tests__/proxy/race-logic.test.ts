import { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import { describe, expect, it } from '@jest/globals';
import type { Dispatcher } from 'undici';
import { codes, RedundantProxyError } from '../../lib/errors.js';
import { Race, type CopyReport, type RaceInput } from '../../lib/proxy/race.js';
import { UNOBSERVED } from '../../lib/proxy/report.js';
import type { Scheduler } from '../../lib/time.js';
import { earlyTimers, VirtualTime } from '../helpers/virtual-time.js';

// The race's state machine alone, with scripted upstreams (pure logic: the
// end-to-end behaviour is covered against real servers elsewhere). Each
// upstream answers at a given time, breaks, or never answers, on a virtual
// clock: every test runs the same steps in the same order, at once.

type Script = { at: number; status?: number; headers?: Record<string, string>; body?: string; bodyAfter?: number; trickle?: number; breakAfterHead?: string } | { at: number; error: string } | null;

function fakeResponse(): ServerResponse & { sent: Buffer[] } {
  const res = new EventEmitter() as EventEmitter & Record<string, unknown>;
  const sent: Buffer[] = [];
  Object.assign(res, {
    sent,
    headersSent: false,
    destroyed: false,
    statusCode: 0,
    writeHead(status: number, headers?: Record<string, string> | string[]) {
      res.headersSent = true;
      res.statusCode = status;
      res.head = headers;
    },
    write(chunk: Buffer) {
      sent.push(Buffer.from(chunk));
      return true;
    },
    end(chunk?: Buffer | string) {
      if (chunk !== undefined) sent.push(Buffer.from(chunk));
    },
    destroy() {
      res.destroyed = true;
    },
  });
  return res as unknown as ServerResponse & { sent: Buffer[] };
}

function scripted(script: Script, time: Scheduler): Dispatcher {
  return {
    dispatch(_opts: unknown, handler: Dispatcher.DispatchHandler) {
      let aborted = false;
      let timer: ReturnType<Scheduler['setTimeout']> | undefined;
      const controller = {
        abort(reason: Error) {
          if (aborted) return;
          aborted = true;
          if (timer !== undefined) time.clearTimeout(timer);
          time.setImmediate(() => handler.onResponseError?.(controller as unknown as Dispatcher.DispatchController, reason));
        },
        pause() {},
        resume() {},
      } as unknown as Dispatcher.DispatchController;
      handler.onRequestStart?.(controller, {});
      if (script) {
        timer = time.setTimeout(() => {
          if (aborted) return;
          if ('error' in script) return handler.onResponseError?.(controller, Object.assign(new Error(script.error), { code: script.error }));
          const body = Buffer.from(script.body ?? 'ok');
          handler.onResponseStart?.(controller, script.status ?? 200, { 'content-length': String(body.length), ...script.headers }, '');
          const rest = () => {
            if (aborted) return;
            if (script.breakAfterHead) return handler.onResponseError?.(controller, Object.assign(new Error(script.breakAfterHead), { code: script.breakAfterHead }));
            if (script.trickle) {
              // One byte every `trickle` ms.
              let i = 0;
              const next = () => {
                if (aborted) return;
                if (i < body.length) {
                  handler.onResponseData?.(controller, body.subarray(i, ++i));
                  timer = time.setTimeout(next, script.trickle!);
                } else handler.onResponseEnd?.(controller, {});
              };
              return next();
            }
            handler.onResponseData?.(controller, body);
            handler.onResponseEnd?.(controller, {});
          };
          if (script.bodyAfter) timer = time.setTimeout(rest, script.bodyAfter);
          else rest();
        }, script.at);
      }
      return true;
    },
  } as unknown as Dispatcher;
}

async function race(scripts: Script[], extra: Partial<RaceInput> = {}, vt = new VirtualTime()) {
  const cancels: CopyReport[] = [];
  const errors: unknown[] = [];
  const selectErrors: unknown[] = [];
  const time = extra.time ?? vt;
  const res = fakeResponse();
  const targets = scripts.map((_, i) => ({ id: `u${i}`, label: `u${i}`, origin: 'http://127.0.0.1', prefix: '', url: 'http://127.0.0.1' }));
  const r = new Race({
    requestId: 'req',
    method: 'POST',
    path: '/',
    update: true,
    sessionId: '',
    sessionNew: false,
    headers: [],
    body: null,
    targets: targets as unknown as RaceInput['targets'],
    dispatchers: new Map(scripts.map((s, i) => [`u${i}`, scripted(s, time)])),
    hedgeDelay: 0,
    budget: { take: () => true },
    timeout: 2000,
    accept: (a) => a.status < 500,
    select: { kind: 'first' },
    maxAnswerSize: 1024 * 1024,
    secret: undefined,
    time,
    wallClock: Date.now,
    res,
    observer: {
      ...UNOBSERVED,
      cancelled: (_requestId, copy) => void cancels.push(copy),
      error: (_requestId, source, err) => void (source === 'select' ? selectErrors : errors).push(err),
      secondCommit: (_requestId, err) => void errors.push(err),
    },
    capture: 0,
    ...extra,
  });
  const report = await vt.run(r.start());
  const sent = Buffer.concat(((extra.res as typeof res | undefined) ?? res).sent).toString();
  return { report, cancels, errors, selectErrors, outcomes: report.copies.map((c) => c.outcome), status: res.statusCode, sent };
}

const won = { 'x-redundant-commit': 'won' };

describe('an update’s losers after a commit (scripted upstreams)', () => {
  it('a copy still processing past the grace is stopped and cancelled once, before the race is reported', async () => {
    const { report, cancels, outcomes } = await race([{ at: 20, headers: won }, null]);
    expect(report.outcome).toBe('won');
    expect(outcomes).toEqual(['won', 'cancelled']);
    expect(cancels.map((c) => c.upstream)).toEqual(['u1']);
  });

  it('a copy answering `lost` within the grace is drained, not cancelled', async () => {
    const { outcomes, cancels } = await race([{ at: 20, headers: won }, { at: 23, status: 409, headers: { 'x-redundant-commit': 'lost' } }]);
    expect(outcomes).toEqual(['won', 'lost']);
    expect(cancels).toEqual([]);
  });

  it('a copy whose connection breaks within the grace is cancelled: its work is in an unknown state', async () => {
    const { outcomes, cancels, report } = await race([{ at: 20, headers: won }, { at: 23, error: 'ECONNRESET' }]);
    expect(outcomes).toEqual(['won', 'cancelled']);
    expect(report.copies[1]!.error).toBe('ECONNRESET');
    expect(cancels.map((c) => c.upstream)).toEqual(['u1']);
  });

  it('a timeout while the committed answer waits for its bookkeeping cancels the lingering copies too', async () => {
    const { report, outcomes, cancels } = await race([{ at: 25, headers: won }, null], {
      timeout: 30,
      beforeHead: () => new Promise(() => undefined),
      beforeFailure: async () => new RedundantProxyError(codes.ANSWER_LOST, 'applied, answer lost', { status: 502 }),
    });
    expect(report.outcome).toBe('answer-lost');
    expect(outcomes[1]).toBe('cancelled');
    expect(cancels.map((c) => c.upstream)).toEqual(['u1']);
  });

  it('a second copy answering `won` is reported as an error: the store’s arbitration failed', async () => {
    const { errors, cancels } = await race([{ at: 20, headers: won }, { at: 23, headers: won }]);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ code: codes.INTERNAL });
    expect(String((errors[0] as Error).message)).toMatch(/u1.*won after upstream "u0"/);
    expect(cancels).toEqual([]);
  });

  it('when the client goes away during the grace, mid-body, the lingering copies are stopped and cancelled at once', async () => {
    const vt = new VirtualTime();
    const res = fakeResponse();
    // The winner's head is out at 20 ms, its body would follow at 70; the client leaves at 21, within the 10 ms grace.
    vt.setTimeout(() => res.emit('close'), 21);
    const { report, outcomes, cancels } = await race([{ at: 20, headers: won, bodyAfter: 50 }, null], { res }, vt);
    expect(report.outcome).toBe('client-closed');
    expect(report.duration).toBe(21);
    expect(outcomes).toEqual(['won', 'cancelled']);
    expect(cancels).toHaveLength(1);
  });

  it('when the client goes away after the whole answer, the lingering copies keep their grace, then are cancelled', async () => {
    const vt = new VirtualTime();
    const res = fakeResponse();
    vt.setTimeout(() => res.emit('close'), 21);
    const { report, outcomes, cancels } = await race([{ at: 20, headers: won }, null], { res }, vt);
    expect(report.outcome).toBe('won');
    expect(outcomes).toEqual(['won', 'cancelled']);
    expect(cancels).toHaveLength(1);
    // The grace is half the winner's latency (10 ms): the loser is stopped at 30, not at 21.
    expect(vt.now()).toBe(30);
  });
});

describe('an update’s adopted answer waiting for its bookkeeping when the timeout comes (found by the race’s properties)', () => {
  it('an answer held and stopped at the adoption is not adopted by the timeout afterwards', async () => {
    // Copy 1's 400 is adopted once copy 2's 422 is in (neither committed); its head waits for the adoption's bookkeeping, which never ends.
    const { report, status, sent, errors } = await race([{ at: 5, status: 400 }, { at: 6, status: 422 }], {
      timeout: 50,
      beforeHead: () => new Promise(() => undefined),
      beforeFailure: async () => undefined,
    });
    expect(errors).toEqual([]);
    expect([report.outcome, status, JSON.parse(sent).code]).toEqual(['timeout', 504, codes.TIMEOUT]);
    expect(report.copies.map((c) => c.outcome)).toEqual(['won', 'stopped']);
  });

  it('bookkeeping that ends while the store is being asked does not send the stopped answer’s head', async () => {
    const vt = new VirtualTime();
    const { report, status, sent, errors } = await race([{ at: 5, status: 200 }], {
      timeout: 50,
      // The adoption is recorded at 70 ms; the store, asked at the 50 ms timeout, answers at 100.
      beforeHead: () => new Promise((resolve) => vt.setTimeout(() => resolve({}), 70)),
      beforeFailure: () => new Promise((resolve) => vt.setTimeout(() => resolve(undefined), 100)),
    }, vt);
    expect(errors).toEqual([]);
    expect([report.outcome, status, JSON.parse(sent).code]).toEqual(['timeout', 504, codes.TIMEOUT]);
  });
});

describe('an update whose store is still being asked when the timeout comes', () => {
  it('every copy failed, the store answers after the timeout: 503 RP_ERR_OUTCOME_UNKNOWN with Retry-After, not a plain 504', async () => {
    const vt = new VirtualTime();
    const res = fakeResponse();
    let asked = -1;
    const { report, sent, errors } = await race([{ at: 5, status: 500 }], {
      res,
      timeout: 50,
      // Asked at 5 ms (every copy failed), the store says "nothing committed" at 100: too late.
      beforeFailure: () => ((asked = vt.now()), new Promise((resolve) => vt.setTimeout(() => resolve(undefined), 95))),
    }, vt);
    expect(asked).toBe(5);
    expect(errors).toEqual([]);
    expect([report.outcome, res.statusCode, JSON.parse(sent).code]).toEqual(['outcome-unknown', 503, codes.OUTCOME_UNKNOWN]);
    expect(report.duration).toBe(50);
    const head = (res as unknown as { head: unknown }).head;
    expect(JSON.stringify(head)).toMatch(/retry-after/i);
  });

  it('the store answering before the timeout decides as before: the upstream\'s own error passes through', async () => {
    const vt = new VirtualTime();
    const { report, status } = await race([{ at: 5, status: 500 }], {
      timeout: 50,
      beforeFailure: () => new Promise((resolve) => vt.setTimeout(() => resolve(undefined), 20)),
    }, vt);
    expect([report.outcome, status]).toEqual(['failed', 500]);
  });
});

describe('timeouts (scripted upstreams)', () => {
  it('only copies still waiting for their answer at the timeout are marked `timeout`; losers stopped earlier are not', async () => {
    // u0 answers first but its body never ends; u1 lost and was stopped long before the timeout; u2 never answers.
    const { report } = await race([{ at: 5, bodyAfter: 10_000 }, { at: 400 }, null], { update: false, timeout: 150 });
    expect(report.outcome).toBe('timeout');
    expect(report.copies.map((c) => [c.outcome, c.error])).toEqual([
      ['won', 'body-timeout'],
      ['stopped', null],
      ['stopped', null],
    ]);
    const slow = await race([null, { at: 400 }], { update: false, timeout: 50 });
    expect(slow.report.copies.map((c) => [c.outcome, c.error])).toEqual([
      ['stopped', 'timeout'],
      ['stopped', 'timeout'],
    ]);
  });
});

describe('timeouts and broken bodies: what the copy reports say', () => {
  it('a hedge sent late in the request is not marked `timeout`: it was out too briefly to tell', async () => {
    const { report } = await race([null, null], { update: false, hedgeDelay: 40, timeout: 60 });
    expect(report.copies.map((c) => [c.outcome, c.error])).toEqual([
      ['stopped', 'timeout'],
      ['stopped', null],
    ]);
  });

  it('a winner whose body breaks after its head reports the error', async () => {
    const { report } = await race([{ at: 5, breakAfterHead: 'ECONNRESET' }, { at: 300 }], { update: false });
    expect(report.outcome).toBe('broken');
    expect(report.copies[0]).toMatchObject({ outcome: 'won', error: 'ECONNRESET' });
  });
});

describe('hedging (scripted upstreams)', () => {
  it('never sends a hedge before its delay, fractional delays too (an adaptive delay is one)', async () => {
    // Node's timers count whole milliseconds from a floored clock: a 5.9 ms
    // timer may fire after as little as 5 ms. These timers do just that.
    for (const start of [0, 0.3, 0.95, 7.5]) {
      const vt = new VirtualTime(start);
      const { report } = await race([null, { at: 1 }], { update: false, hedgeDelay: 5.9, timeout: 500, time: earlyTimers(vt) }, vt);
      const hedge = report.copies[1]!;
      expect(hedge.hedged).toBe(true);
      expect(hedge.sentAt!).toBeGreaterThanOrEqual(5.85);
      expect(hedge.sentAt!).toBeLessThanOrEqual(7);
      expect(report.outcome).toBe('won');
    }
    // On exact timers, it leaves exactly at its delay.
    const { report } = await race([null, { at: 1 }], { update: false, hedgeDelay: 5.9, timeout: 500 });
    expect(report.copies[1]!.sentAt).toBe(5.9);
  });
});

describe('select: a quorum or a function (scripted upstreams)', () => {
  const read = (select: RaceInput['select'], more: Partial<RaceInput> = {}): Partial<RaceInput> => ({ update: false, select, ...more });
  const quorum = (k: number) => ({ kind: 'quorum', quorum: k }) as const;
  const code = (sent: string) => (JSON.parse(sent) as { code: string }).code;

  it('adopts the first answer that k copies gave alike; the agreeing one is `agreed`, the other `outvoted`', async () => {
    const { report, outcomes, sent, status } = await race([{ at: 5, body: 'x' }, { at: 10, body: 'y' }, { at: 20, body: 'x' }], read(quorum(2)));
    expect(report.outcome).toBe('won');
    expect(status).toBe(200);
    expect(sent).toBe('x');
    expect(report.servedBy).toBe('u0');
    expect(outcomes).toEqual(['won', 'outvoted', 'agreed']);
  });

  it('decides as soon as k agree: a copy still out is stopped, not awaited', async () => {
    const { report, outcomes, sent } = await race([{ at: 5, body: 'x' }, { at: 10, body: 'x' }, { at: 400, body: 'x' }], read(quorum(2)));
    expect(sent).toBe('x');
    expect(outcomes).toEqual(['won', 'agreed', 'stopped']);
    expect(report.duration).toBe(10);
  });

  it('the same body with another status is another answer', async () => {
    const { report, status, sent, outcomes } = await race([{ at: 5, body: 'x', status: 200 }, { at: 10, body: 'x', status: 404 }, { at: 15, body: 'x', status: 404 }], read(quorum(2)));
    expect(report.outcome).toBe('won');
    expect(status).toBe(404);
    expect(sent).toBe('x');
    expect(outcomes).toEqual(['outvoted', 'won', 'agreed']);
  });

  it('answers 502 RP_ERR_NO_QUORUM when every copy answered and no k agree', async () => {
    const { report, status, sent, outcomes } = await race([{ at: 5, body: 'x' }, { at: 10, body: 'y' }, { at: 15, body: 'z' }], read(quorum(2)));
    expect(report.outcome).toBe('failed');
    expect(status).toBe(502);
    expect(code(sent)).toBe(codes.NO_QUORUM);
    expect(outcomes).toEqual(['outvoted', 'outvoted', 'outvoted']);
  });

  it('gives up as soon as no k can agree any more, without waiting for the copies still out', async () => {
    const { report, sent, outcomes } = await race([{ at: 5, body: 'x' }, { at: 10, body: 'y' }, null], read(quorum(3), { timeout: 1000 }));
    expect(code(sent)).toBe(codes.NO_QUORUM);
    expect(outcomes).toEqual(['outvoted', 'outvoted', 'stopped']);
    expect(report.duration).toBe(10);
  });

  it('a failed copy counts against the quorum: two failures of three leave no quorum of two', async () => {
    const ok = await race([{ at: 5, body: 'x' }, { at: 8, error: 'ECONNRESET' }, { at: 12, body: 'x' }], read(quorum(2)));
    expect(ok.sent).toBe('x');
    expect(ok.outcomes).toEqual(['won', 'failed', 'agreed']);
    const none = await race([{ at: 5, body: 'x' }, { at: 8, error: 'ECONNRESET' }, { at: 12, error: 'ECONNREFUSED' }], read(quorum(2)));
    expect(code(none.sent)).toBe(codes.NO_QUORUM);
  });

  it('unacceptable answers never vote; with no acceptable answer at all, an upstream’s own error passes through', async () => {
    const { status, sent, report } = await race([{ at: 5, status: 503, body: 'down' }, { at: 10, status: 503, body: 'down' }], read(quorum(2)));
    expect(status).toBe(503);
    expect(sent).toBe('down');
    expect(report.outcome).toBe('failed');
  });

  it('hedged: the k copies of the quorum leave at once, a further one only when they disagree (then at once)', async () => {
    const agree = await race([{ at: 5, body: 'x' }, { at: 10, body: 'x' }, { at: 1, body: 'x' }], read(quorum(2), { hedgeDelay: 200 }));
    expect(agree.outcomes).toEqual(['won', 'agreed', 'not-sent']);
    expect(agree.report.copies[1]!.sentAt).toBe(0);
    const differ = await race([{ at: 5, body: 'x' }, { at: 10, body: 'y' }, { at: 1, body: 'y' }], read(quorum(2), { hedgeDelay: 200 }));
    expect(differ.sent).toBe('y');
    expect(differ.outcomes).toEqual(['outvoted', 'won', 'agreed']);
    // Sent as soon as the two disagreed (at 10 ms), not at the 200 ms delay.
    expect(differ.report.copies[2]!.sentAt).toBe(10);
  });

  it('an answer larger than maxBodySize cannot be compared: it is rejected (the upstream is not failing)', async () => {
    const { outcomes, report } = await race([{ at: 5, body: 'x'.repeat(100) }, { at: 10, body: 'y' }, { at: 15, body: 'y' }], read(quorum(2), { maxAnswerSize: 50 }));
    expect(outcomes).toEqual(['rejected', 'won', 'agreed']);
    expect(report.copies[0]!.error).toMatch(/maxBodySize/);
    const all = await race([{ at: 5, body: 'x'.repeat(100) }, { at: 10, body: 'y'.repeat(100) }], read(quorum(2), { maxAnswerSize: 50 }));
    expect(all.status).toBe(502);
    expect(JSON.parse(all.sent)).toMatchObject({ code: codes.UPSTREAMS_FAILED, message: expect.stringMatching(/2 too large for select/) });
  });

  it('a select function gets a last say at the timeout, with the answers in hand', async () => {
    const calls: number[] = [];
    const { status, sent, report } = await race([{ at: 5, body: 'a' }, { at: 10, body: 'b' }, null], read(
      {
        kind: 'custom',
        choose: (answers, { pending }) => {
          calls.push(pending);
          return pending === 0 ? answers[1] : undefined;
        },
      },
      { timeout: 60 },
    ));
    expect([status, sent]).toEqual([200, 'b']);
    expect(calls).toEqual([2, 1, 0]);
    expect(report.outcome).toBe('won');
    expect(report.copies[2]).toMatchObject({ outcome: 'stopped', error: 'timeout' });
  });

  it('a hedge does not leave while enough copies are still reading their answers', async () => {
    const body = 'x'.repeat(8); // a byte every 10 ms: still arriving when the 20 ms hedge delay runs out
    const { outcomes, sent } = await race([{ at: 5, body, trickle: 10 }, { at: 5, body, trickle: 10 }, { at: 1, body }], read(quorum(2), { hedgeDelay: 20 }));
    expect(sent).toBe(body);
    expect(outcomes).toEqual(['won', 'agreed', 'not-sent']);
  });

  it('a select function is called as answers come, with what is still pending, until it chooses', async () => {
    const calls: Array<{ bodies: string[]; pending: number }> = [];
    const { sent, outcomes } = await race([{ at: 5, body: 'short' }, { at: 10, body: 'the longest' }, { at: 15, body: 'medium' }], read({
      kind: 'custom',
      choose: (answers, state) => {
        calls.push({ bodies: answers.map((a) => a.body.toString()), pending: state.pending });
        if (state.pending > 0) return undefined;
        return [...answers].sort((a, b) => b.body.length - a.body.length)[0];
      },
    }));
    expect(sent).toBe('the longest');
    expect(outcomes).toEqual(['outvoted', 'won', 'outvoted']);
    expect(calls).toEqual([
      { bodies: ['short'], pending: 2 },
      { bodies: ['short', 'the longest'], pending: 1 },
      { bodies: ['short', 'the longest', 'medium'], pending: 0 },
    ]);
  });

  it('a select function that chooses nothing, throws, or returns a stranger gives 502 RP_ERR_NO_SELECTION', async () => {
    const scripts: Script[] = [{ at: 5, body: 'a' }, { at: 10, body: 'b' }];
    const none = await race(scripts, read({ kind: 'custom', choose: () => undefined }));
    expect([none.status, code(none.sent)]).toEqual([502, codes.NO_SELECTION]);
    expect(none.selectErrors).toEqual([]);
    const threw = await race(scripts, read({ kind: 'custom', choose: () => { throw new Error('boom'); } }));
    expect([threw.status, code(threw.sent)]).toEqual([502, codes.NO_SELECTION]);
    const stranger = await race(scripts, read({ kind: 'custom', choose: (answers) => ({ ...answers[0]! }) }));
    expect([stranger.status, code(stranger.sent)]).toEqual([502, codes.NO_SELECTION]);
    const thrown = [...threw.selectErrors, ...stranger.selectErrors];
    expect(thrown.map((e) => (e as Error).message)).toEqual(['boom', expect.stringMatching(/not one of the answers/)]);
  });

  it('the timeout does not ask a select function again once it chose (its answer waiting for its bookkeeping)', async () => {
    let calls = 0;
    const { report, status } = await race([{ at: 5, body: 'a' }, { at: 10, body: 'b' }, null], read(
      {
        kind: 'custom',
        choose: (answers) => {
          calls++;
          return answers[0];
        },
      },
      { timeout: 60, beforeHead: () => new Promise(() => undefined) },
    ));
    expect(calls).toBe(1);
    expect([report.outcome, status]).toEqual(['timeout', 504]);
  });

  it('at the timeout, a copy still waiting, or whose body being compared stalled, is marked `timeout`; one that answers in its grace is not', async () => {
    const stalled = await race([{ at: 5, body: 'x' }, { at: 5, body: 'x', bodyAfter: 500 }, { at: 5, body: 'y' }], read(quorum(2), { timeout: 60 }));
    expect(stalled.status).toBe(504);
    expect(stalled.report.copies.map((c) => c.error)).toEqual([null, 'timeout', null]);
    const late = await race([{ at: 5, body: 'a' }, { at: 10, body: 'b' }, { at: 63, body: 'c' }], read(
      { kind: 'custom', choose: (answers, { pending }) => (pending === 0 ? answers[1] : undefined) },
      { timeout: 60 },
    ));
    expect(late.sent).toBe('b');
    // Adopted at the 60 ms timeout; the third answers at 63, within its grace: drained, not marked.
    expect(late.report.copies[2]).toMatchObject({ outcome: 'drained', error: null });
    // Past its grace (half of 60 ms, at most 10), it is stopped, and then rightly marked.
    const later = await race([{ at: 5, body: 'a' }, { at: 10, body: 'b' }, { at: 75, body: 'c' }], read(
      { kind: 'custom', choose: (answers, { pending }) => (pending === 0 ? answers[1] : undefined) },
      { timeout: 60 },
    ));
    expect(later.report.copies[2]).toMatchObject({ outcome: 'stopped', error: 'timeout' });
  });

  it('a HEAD answer’s Content-Length is not a body: it does not make the answer too large to compare', async () => {
    const head = { 'content-length': '5000000' };
    const { report, status, outcomes } = await race([{ at: 5, body: '', headers: head }, { at: 10, body: '', headers: head }], read(quorum(2), { method: 'HEAD' }));
    expect([report.outcome, status]).toEqual(['won', 200]);
    expect(outcomes).toEqual(['won', 'agreed']);
  });

  it('answers that disagree do not hold a hedge back: a further copy can still make the quorum', async () => {
    // u0 and u1 disagree; u2 (sent at once to replace them) never answers; the hedge sends u3, which agrees with u0.
    const { sent, outcomes } = await race([{ at: 5, body: 'a' }, { at: 8, body: 'b' }, null, { at: 1, body: 'a' }], read(quorum(2), { hedgeDelay: 20, timeout: 1000 }));
    expect(sent).toBe('a');
    expect(outcomes).toEqual(['won', 'outvoted', 'stopped', 'agreed']);
  });

  it('a quorum copy whose body stalls stops holding hedges back', async () => {
    const { report, outcomes, sent } = await race([{ at: 5, body: 'x' }, { at: 5, body: 'x', bodyAfter: 500 }, { at: 1, body: 'x' }], read(quorum(2), { hedgeDelay: 20 }));
    expect(sent).toBe('x');
    expect(outcomes).toEqual(['won', 'drained', 'agreed']);
    // At 20 ms the stalled body's last byte came 15 ms ago (within the delay): held back; at 40 it stalled for 35: sent.
    expect(report.copies[2]!.sentAt).toBe(40);
  });

  it('updates ignore select: the committed copy’s answer wins alone', async () => {
    const { sent, outcomes } = await race([{ at: 20, body: 'committed', headers: won }, { at: 23, status: 409, body: 'no', headers: { 'x-redundant-commit': 'lost' } }], { select: quorum(2) });
    expect(sent).toBe('committed');
    expect(outcomes).toEqual(['won', 'lost']);
  });
});
