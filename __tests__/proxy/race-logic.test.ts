import { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import { describe, expect, it } from '@jest/globals';
import type { Dispatcher } from 'undici';
import { codes, RedundantProxyError } from '../../lib/errors.js';
import { Race, type CopyReport, type RaceInput } from '../../lib/proxy/race.js';

// The race's state machine alone, with scripted upstreams (pure logic: the
// end-to-end behaviour is covered against real servers elsewhere). Each
// upstream answers at a given time, breaks, or never answers.

type Script = { at: number; status?: number; headers?: Record<string, string> } | { at: number; error: string } | null;

function fakeResponse(): ServerResponse {
  const res = new EventEmitter() as EventEmitter & Record<string, unknown>;
  Object.assign(res, {
    headersSent: false,
    destroyed: false,
    statusCode: 0,
    writeHead(status: number) {
      res.headersSent = true;
      res.statusCode = status;
    },
    write: () => true,
    end() {},
    destroy() {
      res.destroyed = true;
    },
  });
  return res as unknown as ServerResponse;
}

function scripted(script: Script): Dispatcher {
  return {
    dispatch(_opts: unknown, handler: Dispatcher.DispatchHandler) {
      let aborted = false;
      const controller = {
        abort(reason: Error) {
          if (aborted) return;
          aborted = true;
          setImmediate(() => handler.onResponseError?.(controller as unknown as Dispatcher.DispatchController, reason));
        },
        pause() {},
        resume() {},
      } as unknown as Dispatcher.DispatchController;
      handler.onRequestStart?.(controller, {});
      if (script) {
        setTimeout(() => {
          if (aborted) return;
          if ('error' in script) return handler.onResponseError?.(controller, Object.assign(new Error(script.error), { code: script.error }));
          handler.onResponseStart?.(controller, script.status ?? 200, { 'content-length': '2', ...script.headers }, '');
          handler.onResponseData?.(controller, Buffer.from('ok'));
          handler.onResponseEnd?.(controller, {});
        }, script.at);
      }
      return true;
    },
  } as unknown as Dispatcher;
}

async function race(scripts: Script[], extra: Partial<RaceInput> = {}) {
  const cancels: CopyReport[] = [];
  const errors: unknown[] = [];
  const t0 = performance.now();
  const targets = scripts.map((_, i) => ({ id: `u${i}`, origin: 'http://127.0.0.1', prefix: '', url: 'http://127.0.0.1' }));
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
    dispatchers: new Map(scripts.map((s, i) => [`u${i}`, scripted(s)])),
    hedgeDelay: 0,
    mayHedge: () => true,
    timeout: 2000,
    accept: (a) => a.status < 500,
    secret: undefined,
    now: () => performance.now() - t0,
    wallClock: Date.now,
    res: fakeResponse(),
    onCancelled: (copy) => void cancels.push(copy),
    onError: (_requestId, err) => void errors.push(err),
    capture: 0,
    ...extra,
  });
  const report = await r.start();
  return { report, cancels, errors, outcomes: report.copies.map((c) => c.outcome) };
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

  it('when the client goes away during the grace, the lingering copies are stopped and cancelled at once', async () => {
    const res = fakeResponse();
    const pending = race([{ at: 20, headers: won }, null], { res });
    // The winner's answer is out at 20 ms; the client leaves during the 2-10 ms grace.
    setTimeout(() => res.emit('close'), 21);
    const { report, outcomes, cancels } = await pending;
    expect(['won', 'client-closed']).toContain(report.outcome);
    expect(outcomes[1]).toBe('cancelled');
    expect(cancels).toHaveLength(1);
  });
});

describe('hedging (scripted upstreams)', () => {
  it('never sends a hedge before its delay, fractional delays too (an adaptive delay is one)', async () => {
    // Node's timers count whole milliseconds from a floored clock: a 5.9 ms
    // timer may fire after as little as 5 ms.
    for (let i = 0; i < 12; i++) {
      const { report } = await race([null, { at: 1 }], { update: false, hedgeDelay: 5.9, timeout: 500 });
      const hedge = report.copies[1]!;
      expect(hedge.hedged).toBe(true);
      expect(hedge.sentAt!).toBeGreaterThanOrEqual(5.85);
      expect(report.outcome).toBe('won');
    }
  });
});
