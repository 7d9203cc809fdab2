import { randomBytes } from 'node:crypto';
import pg from 'pg';

// A tiny bank in a real PostgreSQL: accounts with a fence column, and a ledger
// with one row per committed request id. Every test counts commits here, in
// the database, never in the code under test.

export const PG = { host: process.env.PGHOST ?? '127.0.0.1', port: Number(process.env.PGPORT ?? 5432), user: process.env.PGUSER ?? 'postgres', database: process.env.PGDATABASE ?? 'test' };

export interface Bank {
  schema: string;
  admin: pg.Pool;
  /** A pool for one replica, with the bank's schema on its search path. */
  pool(max?: number): pg.Pool;
  total(): Promise<number>;
  ledger(): Promise<Array<{ request_id: string; fence: string; upstream: string }>>;
  /**
   * Accounts whose balance is not what the ledger says (the opening balance,
   * less what the ledger moved out, plus what it moved in): a transfer
   * applied twice, or applied without its ledger row, shows here even though
   * the bank's total is unchanged.
   */
  mismatches(): Promise<Array<{ id: number; balance: number; expected: number }>>;
  close(): Promise<void>;
}

export async function createBank(accounts = 10, balance = 1000): Promise<Bank> {
  const schema = `rp_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Pool({ ...PG, max: 2 });
  await admin.query(`CREATE SCHEMA ${schema}`);
  await admin.query(`CREATE TABLE ${schema}.accounts (id int PRIMARY KEY, balance bigint NOT NULL, fence bigint NOT NULL DEFAULT 0)`);
  // idem_key: the update's Idempotency-Key as the proxy hashed it (h.idempotencyKey), unique when present.
  await admin.query(`CREATE TABLE ${schema}.ledger (request_id text PRIMARY KEY, idem_key text UNIQUE, fence bigint NOT NULL, upstream text NOT NULL, from_id int NOT NULL, to_id int NOT NULL, amount bigint NOT NULL)`);
  await admin.query(`INSERT INTO ${schema}.accounts (id, balance) SELECT g, $1 FROM generate_series(1, $2) g`, [balance, accounts]);
  const pools: pg.Pool[] = [];
  return {
    schema,
    admin,
    pool(max = 10) {
      const p = new pg.Pool({ ...PG, max, options: `-c search_path=${schema}` });
      // A connection terminated under a test (a simulated crash) must not crash the process.
      p.on('error', () => undefined);
      pools.push(p);
      return p;
    },
    async total() {
      const r = await admin.query(`SELECT COALESCE(SUM(balance), 0)::bigint AS t FROM ${schema}.accounts`);
      return Number(r.rows[0].t);
    },
    async ledger() {
      const r = await admin.query(`SELECT request_id, fence::text, upstream FROM ${schema}.ledger ORDER BY request_id`);
      return r.rows;
    },
    async mismatches() {
      const r = await admin.query(
        `SELECT a.id, a.balance::bigint AS balance,
                ($1::bigint - COALESCE((SELECT SUM(amount) FROM ${schema}.ledger WHERE from_id = a.id), 0)
                            + COALESCE((SELECT SUM(amount) FROM ${schema}.ledger WHERE to_id = a.id), 0))::bigint AS expected
           FROM ${schema}.accounts a ORDER BY a.id`,
        [balance],
      );
      return r.rows.map((row) => ({ id: Number(row.id), balance: Number(row.balance), expected: Number(row.expected) })).filter((row) => row.balance !== row.expected);
    },
    async close() {
      await Promise.all(pools.map((p) => p.end()));
      await admin.query(`DROP SCHEMA ${schema} CASCADE`);
      await admin.end();
    },
  };
}
