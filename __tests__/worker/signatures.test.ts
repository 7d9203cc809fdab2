import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { MemorySessionStore, redundantProxy, type RedundantProxy } from '../../lib/index.js';
import { mintSessionId, SESSION_ID, sign, type CopyClaims } from '../../lib/wire/protocol.js';
import { testClient } from '../helpers/client.js';
import { mountGateway, type Gateway } from '../helpers/gateway.js';
import { startReplica, type Replica } from '../helpers/replica.js';

const SECRET = 'signature-secret-0123456789';
const client = testClient();

describe.each(['koa', 'express'] as const)('copy signatures (%s worker)', (kind) => {
  let store: MemorySessionStore;
  let replica: Replica;
  let other: Replica;
  let proxy: RedundantProxy;
  let gw: Gateway;
  let ran = 0;
  const captured: Array<Record<string, string>> = [];

  beforeAll(async () => {
    store = new MemorySessionStore();
    const handler = (_h: unknown, req: { headers: Record<string, string | string[] | undefined> }) => {
      ran++;
      const h: Record<string, string> = {};
      for (const [k, v] of Object.entries(req.headers)) if (k.startsWith('x-redundant-') && typeof v === 'string') h[k] = v;
      captured.push(h);
      return { body: { ok: true } };
    };
    replica = await startReplica(kind, { id: 'a', store, secret: SECRET }, handler);
    other = await startReplica(kind, { id: 'b', store, secret: SECRET }, handler);
    proxy = redundantProxy({ upstreams: [{ id: 'a', url: replica.url }], store, secret: SECRET });
    gw = await mountGateway('node', proxy);
  });
  afterAll(async () => {
    await gw.close();
    await proxy.close();
    await replica.close();
    await other.close();
    await store.close();
  });

  async function validCopyHeaders(): Promise<Record<string, string>> {
    const before = captured.length;
    const res = await client.send(`${gw.url}/ok`);
    expect(res.status).toBe(200);
    expect(captured.length).toBe(before + 1);
    return captured[captured.length - 1]!;
  }

  async function refused(headers: Record<string, string>, code: string, url = replica.url) {
    const before = ran;
    const res = await client.send(`${url}/direct`, { headers });
    expect(res.status).toBe(401);
    expect(res.json()).toMatchObject({ code });
    expect(ran).toBe(before); // the handler never ran
  }

  it('accepts the proxy’s signed copies', async () => {
    const h = await validCopyHeaders();
    expect(h['x-redundant-signature']).toMatch(/^[A-Za-z0-9_-]+$/);
  });

  it('refuses an unsigned copy', async () => {
    const h = await validCopyHeaders();
    delete h['x-redundant-signature'];
    await refused(h, 'RP_ERR_BAD_SIGNATURE');
  });

  it('refuses a forged copy (signed with another key)', async () => {
    const claims: CopyClaims = { requestId: 'forged-1', duplicateId: 'forged-1.1', upstreamId: 'a', index: 1, of: 1, update: true, sessionId: '', sessionNew: false, timestamp: Date.now() };
    await refused(
      {
        'x-redundant-request-id': claims.requestId,
        'x-redundant-duplicate-id': claims.duplicateId,
        'x-redundant-upstream': 'a',
        'x-redundant-copy': '1/1',
        'x-redundant-update': '1',
        'x-redundant-timestamp': String(claims.timestamp),
        'x-redundant-signature': sign(claims, 'another-secret-0123456789'),
      },
      'RP_ERR_BAD_SIGNATURE',
    );
  });

  it('refuses a tampered copy (a signed field changed)', async () => {
    const h = await validCopyHeaders();
    await refused({ ...h, 'x-redundant-update': h['x-redundant-update'] === '1' ? '0' : '1', 'x-redundant-duplicate-id': `${h['x-redundant-duplicate-id']}x` }, 'RP_ERR_BAD_SIGNATURE');
    const h2 = await validCopyHeaders();
    await refused({ ...h2, 'x-redundant-request-id': 'another-request' }, 'RP_ERR_BAD_SIGNATURE');
  });

  it('signs the Idempotency-Key it passes on: one added, changed or dropped is refused', async () => {
    const claims: CopyClaims = { requestId: 'keyed-1', duplicateId: 'keyed-1.1', upstreamId: 'a', index: 1, of: 1, update: true, sessionId: '', sessionNew: false, timestamp: Date.now(), idempotencyKey: 'aGFzaGVkLWtleS1vbmU' };
    const base = {
      'x-redundant-request-id': claims.requestId,
      'x-redundant-duplicate-id': claims.duplicateId,
      'x-redundant-upstream': 'a',
      'x-redundant-copy': '1/1',
      'x-redundant-update': '1',
      'x-redundant-timestamp': String(claims.timestamp),
    };
    await refused({ ...base, 'x-redundant-idempotency': 'aGFzaGVkLWtleS10d28', 'x-redundant-signature': sign(claims, SECRET) }, 'RP_ERR_BAD_SIGNATURE');
    await refused({ ...base, 'x-redundant-signature': sign(claims, SECRET) }, 'RP_ERR_BAD_SIGNATURE');
    const unkeyed: CopyClaims = { ...claims, duplicateId: 'keyed-1.2', idempotencyKey: undefined };
    await refused({ ...base, 'x-redundant-duplicate-id': unkeyed.duplicateId, 'x-redundant-idempotency': 'aGFzaGVkLWtleS1vbmU', 'x-redundant-signature': sign(unkeyed, SECRET) }, 'RP_ERR_BAD_SIGNATURE');
  });

  it('refuses a replayed copy', async () => {
    const h = await validCopyHeaders();
    await refused(h, 'RP_ERR_REPLAYED_COPY');
  });

  it('refuses a copy replayed to another upstream', async () => {
    const h = await validCopyHeaders();
    await refused(h, 'RP_ERR_WRONG_UPSTREAM', other.url);
  });

  it('refuses a stale copy, correctly signed but outside the clock skew', async () => {
    const claims: CopyClaims = { requestId: 'stale-1', duplicateId: 'stale-1.1', upstreamId: 'a', index: 1, of: 1, update: false, sessionId: '', sessionNew: false, timestamp: Date.now() - 10 * 60_000 };
    await refused(
      {
        'x-redundant-request-id': claims.requestId,
        'x-redundant-duplicate-id': claims.duplicateId,
        'x-redundant-upstream': 'a',
        'x-redundant-copy': '1/1',
        'x-redundant-update': '0',
        'x-redundant-timestamp': String(claims.timestamp),
        'x-redundant-signature': sign(claims, SECRET),
      },
      'RP_ERR_STALE_COPY',
    );
  });

  it('refuses malformed copy headers', async () => {
    const h = await validCopyHeaders();
    await refused({ ...h, 'x-redundant-copy': 'one of three' }, 'RP_ERR_BAD_SIGNATURE');
  });

  it('serves a request without copy headers as direct', async () => {
    const before = ran;
    const res = await client.send(`${replica.url}/direct`);
    expect(res.status).toBe(200);
    expect(ran).toBe(before + 1);
  });
});

afterAll(() => client.close());

describe('minted session ids', () => {
  it('are valid, 144-bit and never repeat, across refills of the entropy batch', () => {
    const seen = new Set<string>();
    // 256 ids per batch: this crosses ten refills.
    for (let i = 0; i < 2600; i++) {
      const id = mintSessionId();
      expect(id).toMatch(SESSION_ID);
      expect(Buffer.from(id, 'base64url')).toHaveLength(18);
      seen.add(id);
    }
    expect(seen.size).toBe(2600);
  });
});
