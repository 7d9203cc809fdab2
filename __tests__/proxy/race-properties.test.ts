import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { RedundantProxyError } from '../../lib/errors.js';
import { COPY_OUTCOMES } from '../../lib/proxy/report.js';
import { Harness, type HarnessConfig } from '../helpers/race-harness.js';

// Properties of the race, checked on generated event orders: 1–5 copies,
// reads (first acceptable, quorum, select function) and updates, hedged or
// not; each copy's request start, interim (1xx) heads, final heads (any
// status, committed or lost or applied, refused, small, chunked or large
// bodies), body chunks, ends, resets; hedge timers, the losers' grace and
// the timeout as the virtual clock moves; the client leaving; the store's
// word before an update fails. The test plays undici at the dispatcher
// boundary and the client at the response.
//
// Seeded: the same orders run every time. A failure prints the seed and the
// path of the smallest failing order; replay it with
//   RACE_SEED=<seed> RACE_PATH=<path> npx jest __tests__/proxy/race-properties.test.ts
// and explore other orders with RACE_SEED=random (RACE_RUNS=n for more).

const SEED = process.env.RACE_SEED === 'random' ? Math.floor(Math.random() * 2 ** 31) : Number(process.env.RACE_SEED ?? 20261201);
const RUNS = Number(process.env.RACE_RUNS ?? 2500);
const PATH = process.env.RACE_PATH;

type Head = { status: number; commit: string | undefined; framing: 'length' | 'chunked' | 'large'; body: string; refused: boolean };
type Event =
  | { kind: 'start' | 'interim' | 'data' | 'end' | 'error' | 'refuse'; copy: number }
  | ({ kind: 'head' | 'answer'; copy: number } & Head)
  | { kind: 'tick'; ms: number }
  | { kind: 'leave' | 'hook' | 'drain' };

const copyIndex = fc.nat({ max: 4 });
const head = {
  copy: copyIndex,
  status: fc.constantFrom(200, 200, 200, 201, 204, 304, 400, 404, 409, 500, 503),
  commit: fc.constantFrom(undefined, undefined, 'won', 'won', 'lost', 'applied'),
  framing: fc.constantFrom('length' as const, 'length' as const, 'chunked' as const, 'large' as const),
  body: fc.constantFrom('', 'a', 'ab', 'xyz', 'a much longer answer body'),
  refused: fc.oneof({ weight: 19, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
};
const event: fc.Arbitrary<Event> = fc.oneof(
  { weight: 20, arbitrary: fc.record({ kind: fc.constant('start' as const), copy: copyIndex }) },
  { weight: 10, arbitrary: fc.record({ kind: fc.constant('interim' as const), copy: copyIndex }) },
  { weight: 60, arbitrary: fc.record({ kind: fc.constant('head' as const), ...head }) },
  // A head and its whole body at once.
  { weight: 60, arbitrary: fc.record({ kind: fc.constant('answer' as const), ...head }) },
  { weight: 50, arbitrary: fc.record({ kind: fc.constant('data' as const), copy: copyIndex }) },
  { weight: 40, arbitrary: fc.record({ kind: fc.constant('end' as const), copy: copyIndex }) },
  { weight: 10, arbitrary: fc.record({ kind: fc.constant('error' as const), copy: copyIndex }) },
  // The connection is refused before the request starts (a retry may send the copy again).
  { weight: 8, arbitrary: fc.record({ kind: fc.constant('refuse' as const), copy: copyIndex }) },
  { weight: 40, arbitrary: fc.record({ kind: fc.constant('tick' as const), ms: fc.constantFrom(1, 1, 3, 7, 20, 20, 60, 300) }) },
  { weight: 3, arbitrary: fc.constant({ kind: 'leave' as const }) },
  // The proxy's step the race waits for is done (the adoption recorded, the key completed, the store's word).
  { weight: 20, arbitrary: fc.constant({ kind: 'hook' as const }) },
  { weight: 10, arbitrary: fc.constant({ kind: 'drain' as const }) },
);

const config: fc.Arbitrary<HarnessConfig> = fc
  .record({
    copies: fc.integer({ min: 1, max: 5 }),
    update: fc.boolean(),
    select: fc.constantFrom('first', 'first', 'quorum', 'custom'),
    k: fc.integer({ min: 1, max: 3 }),
    hedgeDelay: fc.constantFrom(0, 0, 5, 25),
    timeout: fc.constantFrom(50, 400, 2000),
    maxAnswerSize: fc.constantFrom(4, 1024 * 1024),
    asyncHead: fc.boolean(),
    beforeEnd: fc.boolean(),
    store: fc.constantFrom('nothing' as const, 'committed' as const, 'claimed' as const),
    slowClient: fc.boolean(),
    hedges: fc.constantFrom(0, 1, Infinity),
    acceptThrows: fc.boolean(),
    perTryTimeout: fc.constantFrom(0, 0, 10, 30),
    retry: fc.boolean(),
  })
  .map(({ select, k, ...rest }) => ({
    ...rest,
    select:
      select === 'quorum'
        ? ({ kind: 'quorum', quorum: Math.min(k, rest.copies) } as const)
        : select === 'custom'
          ? ({
              kind: 'custom',
              // Waits for two answers (or the last), then takes the first.
              choose: (answers, { pending }) => (answers.length >= 2 || pending === 0 ? answers[0] : undefined),
            } as const)
          : ({ kind: 'first' } as const),
  }));

/** Runs one order; returns what broke, or null. */
async function run(cfg: HarnessConfig, events: Event[]): Promise<string | null> {
  const h = new Harness(cfg);
  h.start();
  for (const e of events) {
    switch (e.kind) {
      case 'start':
        h.requestStart(e.copy % cfg.copies);
        break;
      case 'interim':
        h.interim(e.copy % cfg.copies);
        break;
      case 'head':
      case 'answer': {
        const i = e.copy % cfg.copies;
        // A copy's first event starts its request, as undici does before any answer.
        h.requestStart(i);
        h.head(i, e.status, cfg.update ? e.commit : undefined, e.framing, e.body, e.refused);
        if (e.kind === 'answer') while (h.data(i));
        if (e.kind === 'answer') h.end(i);
        break;
      }
      case 'data':
        h.data(e.copy % cfg.copies);
        break;
      case 'end':
        h.end(e.copy % cfg.copies);
        break;
      case 'error':
        h.error(e.copy % cfg.copies);
        break;
      case 'refuse':
        h.refuse(e.copy % cfg.copies);
        break;
      case 'tick':
        h.tick(e.ms);
        break;
      case 'leave':
        h.leave();
        break;
      case 'hook':
        h.hook();
        break;
      case 'drain':
        h.drain();
        break;
    }
    await Promise.resolve();
  }
  const stuck = await h.quiesce();
  return check(h, stuck);
}

function check(h: Harness, stuck: string | null): string | null {
  const { res, report, config: cfg } = h;
  if (h.thrown.length > 0) return `a handler threw: ${String(h.thrown[0])}`;
  if (stuck) return stuck;
  if (h.sentAfterAdoption > 0) return `${h.sentAfterAdoption} copies sent after an answer was adopted`;
  if (!report) return 'no report';
  // The client's answer: one head (or, cut off after it, a reset); never a body after an error or the end.
  if (res.misuse.length > 0) return `the response was misused: ${res.misuse.join(', ')}`;
  const left = report.outcome === 'client-closed';
  if (!left && res.heads !== 1) return `${res.heads} heads written to a client that stayed`;
  if (!left && !res.writableEnded && !res.destroyed) return 'the answer to a client that stayed never ended';
  if (report.outcome === 'won' && (!res.writableEnded || res.destroyed)) return 'a won race did not end its answer cleanly';
  // Every copy ends and gives its connection back.
  for (const [upstream, n] of h.inFlight) if (n !== 0) return `${upstream}: ${n} copies still counted in flight`;
  // The report adds up.
  if (report.copies.length !== cfg.copies) return 'a copy is missing from the report';
  const dispatched = h.exchanges.filter((ex) => ex.dispatched).length;
  const sent = report.copies.filter((c) => c.sentAt !== null).length;
  if (sent !== dispatched || h.copiesStarted !== h.dispatches) return `${sent} copies reported sent, ${dispatched} dispatched (${h.dispatches} times), ${h.copiesStarted} counted`;
  // Retries: only of copies whose request never started, at most as many as allowed.
  if (h.retriedAfterStart > 0) return `${h.retriedAfterStart} copies sent again after their request had gone out`;
  if (h.dispatches - dispatched > (cfg.retry ? 2 * cfg.copies : 0)) return `${h.dispatches - dispatched} retries`;
  for (const c of report.copies) if (c.error === 'per-try-timeout' && c.outcome !== 'failed') return `copy ${c.index} given up but reported ${c.outcome}`;
  for (const c of report.copies) {
    if (!COPY_OUTCOMES.includes(c.outcome)) return `unknown outcome ${c.outcome}`;
    if ((c.outcome === 'not-sent') !== (c.sentAt === null)) return `copy ${c.index} is ${c.outcome} with sentAt ${c.sentAt}`;
  }
  const won = report.copies.filter((c) => c.outcome === 'won');
  if (won.length > 1) return `${won.length} copies won`;
  if (won[0] && report.adopted !== won[0].duplicateId) return 'the winner is not the adopted copy';
  if (report.adopted && !won[0] && !report.copies.some((c) => c.duplicateId === report.adopted && c.outcome === 'rejected')) return 'an adopted copy that neither won nor was passed through';
  if (report.outcome === 'won' && !won[0]) return 'a won race without a winner';
  if (!left && report.status !== res.statusCode) return `report status ${report.status}, client got ${res.statusCode}`;
  if (report.outcome === 'won' && won[0]) {
    const ex = h.exchanges[won[0].index - 1]!;
    if (res.statusCode !== ex.status) return 'the client got another status than the winner’s';
    const bodyless = ex.status === 204 || ex.status === 304;
    if (!bodyless && !Buffer.concat(res.body).equals(Buffer.concat(ex.chunks))) return 'the client got another body than the winner’s';
  }
  // Updates: a committed answer wins over any that did not commit; a commit is reported once.
  if (cfg.update && h.adoption && h.wonHeads.length > 0 && h.exchanges[h.adoption.index]!.commit !== 'won') {
    const when = h.adoption.committedBefore.length > 0 ? 'after' : 'while it was still out, and then';
    return `copy ${h.adoption.index + 1} (not committed) was adopted ${when} copy ${h.wonHeads[0]! + 1} committed`;
  }
  if (report.committed && !cfg.update) return 'a read reported a commit';
  const cancelled = h.cancelled.map((c) => c.copy.index);
  if (new Set(cancelled).size !== cancelled.length) return `a copy was cancelled twice: ${cancelled.join(',')}`;
  for (const c of h.cancelled) {
    if (!report.committed) return 'a copy was cancelled although nothing committed';
    if (c.copy.index === won[0]?.index) return 'the winner was cancelled';
    if (report.copies[c.copy.index - 1]!.outcome !== 'cancelled') return `copy ${c.copy.index} cancelled but reported ${report.copies[c.copy.index - 1]!.outcome}`;
  }
  // Hedges: none past the budget. Copies that replace failed ones leave outside it, so only hedged ones count.
  const hedged = report.copies.filter((c) => c.hedged).length;
  if (hedged > cfg.hedges) return `${hedged} hedges sent with a budget of ${cfg.hedges}`;
  if (hedged > 0 && cfg.hedgeDelay === 0) return 'a hedge without a hedge delay';
  const threw = h.errors.find((e) => e.source === 'internal' && !(e.error instanceof RedundantProxyError));
  if (threw) return `a step the race waited for threw: ${String(threw.error)}`;
  const secondCommits = h.errors.filter((e) => e.source === 'internal').length;
  if (secondCommits > Math.max(0, h.wonHeads.length - 1)) return `${secondCommits} arbitration failures reported for ${h.wonHeads.length} commits`;
  return null;
}

describe('the race, on generated event orders (fast-check)', () => {
  it(`keeps its invariants on ${RUNS} orders of 1–5 copies (seed ${SEED})`, async () => {
    const result = await fc.check(
      fc.asyncProperty(config, fc.array(event, { maxLength: 40 }), async (cfg, events) => {
        const broken = await run(cfg, events);
        if (broken) throw new Error(broken);
      }),
      { seed: SEED, numRuns: RUNS, path: PATH, endOnFailure: false },
    );
    if (result.failed) {
      const [cfg, events] = result.counterexample ?? [];
      throw new Error(
        `${String((result.errorInstance as Error | undefined)?.message ?? result.errorInstance)}\n` +
          `seed ${result.seed}, path ${result.counterexamplePath}\n` +
          `replay: RACE_SEED=${result.seed} RACE_PATH=${result.counterexamplePath} npx jest __tests__/proxy/race-properties.test.ts\n` +
          `config: ${JSON.stringify(cfg)}\nevents: ${JSON.stringify(events)}`,
      );
    }
    expect(result.numRuns).toBe(RUNS);
  });
});
