import type { IncomingMessage } from 'node:http';
import type pg from 'pg';
import { AlreadyAppliedError, type RedundantHandle } from '../../lib/index.js';
import type { Answer } from './replica.js';

export interface Transfer {
  from: number;
  to: number;
  amount: number;
}

export async function readJson<T>(req: IncomingMessage): Promise<T> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return JSON.parse(Buffer.concat(chunks).toString() || '{}') as T;
}

import { sleep } from './upstream.js';

export { sleep };

export interface TransferHooks {
  /** Milliseconds of work before the transaction starts. */
  think?: () => number;
  /** Milliseconds of "processing" inside the transaction, rows locked, before the commit. */
  delay?: () => number;
  /** Runs inside commitOnce, before the ledger insert and COMMIT. Throw to make this copy's commit fail. */
  beforeCommit?: (h: RedundantHandle, client: pg.PoolClient, req: IncomingMessage) => Promise<void> | void;
  /** Runs inside commitOnce right after COMMIT, before the confirm (a crash here is a commit the store never hears of). */
  afterWrite?: (h: RedundantHandle, client: pg.PoolClient, req: IncomingMessage) => Promise<void> | void;
  /** Runs after the commit was confirmed, before the answer. */
  afterCommit?: (h: RedundantHandle, req: IncomingMessage) => Promise<void> | void;
  /** A validation error: answer 400 before touching anything (no copy commits). */
  invalid?: (h: RedundantHandle) => boolean;
}

/**
 * Moves money in a transaction: lock both rows, update them, then commit
 * exactly once with the ledger row (unique per request id) in the same
 * transaction. A ledger row already there means an earlier copy committed
 * and died before confirming: AlreadyAppliedError. The pattern
 * docs/updates.md describes.
 */
export function transferHandler(pool: pg.Pool, hooks: TransferHooks = {}) {
  return async (h: RedundantHandle, req: IncomingMessage): Promise<Answer> => {
    if (req.method === 'GET') return { body: { ok: true } };
    const t = await readJson<Transfer>(req);
    const think = hooks.think?.() ?? 0;
    if (think) await sleep(think);
    if (hooks.invalid?.(h)) return { status: 400, body: { invalid: true, by: h.upstreamId } };
    const client = await pool.connect();
    let broken = false;
    try {
      await client.query('BEGIN');
      await client.query('SELECT id FROM accounts WHERE id = ANY($1::int[]) ORDER BY id FOR UPDATE', [[t.from, t.to]]);
      await client.query('UPDATE accounts SET balance = balance - $1 WHERE id = $2', [t.amount, t.from]);
      await client.query('UPDATE accounts SET balance = balance + $1 WHERE id = $2', [t.amount, t.to]);
      const delay = hooks.delay?.() ?? 0;
      if (delay) await sleep(delay);
      const fence = await h.commitOnce(async (fence) => {
        await hooks.beforeCommit?.(h, client, req);
        const row = await client.query(
          // No conflict target: the request id's row or the Idempotency-Key's row, either one means applied.
          'INSERT INTO ledger (request_id, idem_key, fence, upstream, from_id, to_id, amount) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING',
          [h.requestId, h.idempotencyKey, fence, h.upstreamId, t.from, t.to, t.amount],
        );
        if (row.rowCount === 0) throw new AlreadyAppliedError();
        await client.query('COMMIT');
        await hooks.afterWrite?.(h, client, req);
        return fence;
      });
      await hooks.afterCommit?.(h, req);
      return { status: 200, body: { ok: true, fence, by: h.upstreamId, requestId: h.requestId } };
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {
        broken = true;
      });
      throw err;
    } finally {
      client.release(broken);
    }
  };
}

/**
 * The fence-column pattern: claim first, then write only where the row's
 * fence is older than ours. A copy paused past its lease finds a newer fence
 * and writes nothing.
 */
export function fencedTransferHandler(pool: pg.Pool, hooks: { afterClaim?: (h: RedundantHandle) => Promise<void> | void; refused?: (h: RedundantHandle) => void } = {}) {
  return async (h: RedundantHandle, req: IncomingMessage): Promise<Answer> => {
    if (req.method === 'GET') return { body: { ok: true } };
    const t = await readJson<Transfer>(req);
    const claim = await h.claim();
    await hooks.afterClaim?.(h);
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      const a = await client.query('UPDATE accounts SET balance = balance - $1, fence = $3 WHERE id = $2 AND fence < $3', [t.amount, t.from, claim.fence]);
      const b = await client.query('UPDATE accounts SET balance = balance + $1, fence = $3 WHERE id = $2 AND fence < $3', [t.amount, t.to, claim.fence]);
      if (a.rowCount !== 1 || b.rowCount !== 1) {
        await client.query('ROLLBACK');
        hooks.refused?.(h);
        await claim.release();
        return { status: 409, body: { refused: 'fence' } };
      }
      await client.query('INSERT INTO ledger (request_id, fence, upstream, from_id, to_id, amount) VALUES ($1, $2, $3, $4, $5, $6)', [h.requestId, claim.fence, h.upstreamId, t.from, t.to, t.amount]);
      await client.query('COMMIT');
      await claim.confirm();
      return { status: 200, body: { ok: true, fence: claim.fence, by: h.upstreamId } };
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
  };
}
