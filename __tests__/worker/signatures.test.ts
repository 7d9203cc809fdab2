import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { createHash } from 'node:crypto';
import { MemorySessionStore, redundantProxy, type RedundantProxy } from '../../lib/index.js';
import { mintSessionId, SESSION_ID, sign, type CopyClaims } from '../../lib/wire/protocol.js';
import { testClient } from '../helpers/client.js';
import { mountGateway, type Gateway } from '../helpers/gateway.js';
import { startReplica, type Replica } from '../helpers/replica.js';

const SECRET = 'signature-secret-0123456789';
/** SHA-256 of the empty body, base64url: what a bodyless copy's signature covers. */
const EMPTY_BODY = createHash('sha256').update('').digest('base64url');
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

  /**
   * Sends copy headers to `${url}/ok` (the target the proxy's captured copies
   * were signed for), as a GET without a body; expects a 401 with `code`
   * before the handler ran.
   */
  async function refused(headers: Record<string, string>, code: string, url = replica.url) {
    const before = ran;
    const res = await client.send(`${url}/ok`, { headers });
    expect(res.status).toBe(401);
    expect(res.json()).toMatchObject({ code });
    expect(ran).toBe(before); // the handler never ran
  }

  /** A hand-crafted copy's claims, bound to `GET /ok` without a body. */
  function claimsOf(fields: Partial<CopyClaims> & Pick<CopyClaims, 'requestId' | 'duplicateId'>): CopyClaims {
    return { upstreamId: 'a', index: 1, of: 1, update: false, sessionId: '', sessionNew: false, timestamp: Date.now(), method: 'GET', target: '/ok', bodyHash: EMPTY_BODY, ...fields };
  }

  /** The headers of a hand-crafted copy: those of `c`, signed with `key`. */
  function headersOf(c: CopyClaims, key: string = SECRET): Record<string, string> {
    const h: Record<string, string> = {
      'x-redundant-request-id': c.requestId,
      'x-redundant-duplicate-id': c.duplicateId,
      'x-redundant-upstream': c.upstreamId,
      'x-redundant-copy': `${c.index}/${c.of}`,
      'x-redundant-update': c.update ? '1' : '0',
      'x-redundant-timestamp': String(c.timestamp),
      'x-redundant-signature': sign(c, key),
    };
    if (c.bodyHash !== undefined) h['x-redundant-body-sha256'] = c.bodyHash;
    if (c.idempotencyKey !== undefined) h['x-redundant-idempotency'] = c.idempotencyKey;
    return h;
  }

  /** Sends a copy that must be accepted (the control of a refusal). */
  async function accepted(headers: Record<string, string>) {
    const before = ran;
    const res = await client.send(`${replica.url}/ok`, { headers });
    expect(res.status).toBe(200);
    expect(ran).toBe(before + 1);
  }

  it('accepts the proxy’s signed copies', async () => {
    const h = await validCopyHeaders();
    expect(h['x-redundant-signature']).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(h['x-redundant-body-sha256']).toBe(EMPTY_BODY);
  });

  it('accepts a hand-crafted copy signed with the secret (the control of the refusals below)', async () => {
    await accepted(headersOf(claimsOf({ requestId: 'crafted-1', duplicateId: 'crafted-1.1' })));
    await accepted(headersOf(claimsOf({ requestId: 'crafted-2', duplicateId: 'crafted-2.1', update: true, idempotencyKey: 'aGFzaGVkLWtleS1vbmU' })));
  });

  it('refuses an unsigned copy', async () => {
    const h = await validCopyHeaders();
    delete h['x-redundant-signature'];
    await refused(h, 'RP_ERR_BAD_SIGNATURE');
  });

  it('refuses a forged copy (signed with another key)', async () => {
    await refused(headersOf(claimsOf({ requestId: 'forged-1', duplicateId: 'forged-1.1', update: true }), 'another-secret-0123456789'), 'RP_ERR_BAD_SIGNATURE');
  });

  it('refuses a tampered copy (a signed field changed)', async () => {
    const h = await validCopyHeaders();
    await refused({ ...h, 'x-redundant-update': h['x-redundant-update'] === '1' ? '0' : '1', 'x-redundant-duplicate-id': `${h['x-redundant-duplicate-id']}x` }, 'RP_ERR_BAD_SIGNATURE');
    const h2 = await validCopyHeaders();
    await refused({ ...h2, 'x-redundant-request-id': 'another-request' }, 'RP_ERR_BAD_SIGNATURE');
  });

  it('signs the Idempotency-Key it passes on: one added, changed or dropped is refused', async () => {
    const claims = claimsOf({ requestId: 'keyed-1', duplicateId: 'keyed-1.1', update: true, idempotencyKey: 'aGFzaGVkLWtleS1vbmU' });
    await refused({ ...headersOf(claims), 'x-redundant-idempotency': 'aGFzaGVkLWtleS10d28' }, 'RP_ERR_BAD_SIGNATURE');
    const { 'x-redundant-idempotency': _dropped, ...unkeyed } = headersOf({ ...claims, duplicateId: 'keyed-1.2' });
    await refused(unkeyed, 'RP_ERR_BAD_SIGNATURE');
    await refused({ ...headersOf({ ...claims, duplicateId: 'keyed-1.3', idempotencyKey: undefined }), 'x-redundant-idempotency': 'aGFzaGVkLWtleS1vbmU' }, 'RP_ERR_BAD_SIGNATURE');
  });

  it('signs the method, the target and the body hash: a copy signed for another request is refused', async () => {
    await refused(headersOf(claimsOf({ requestId: 'bound-1', duplicateId: 'bound-1.1', method: 'POST' })), 'RP_ERR_BAD_SIGNATURE');
    await refused(headersOf(claimsOf({ requestId: 'bound-1', duplicateId: 'bound-1.2', target: '/ok?x=1' })), 'RP_ERR_BAD_SIGNATURE');
    await refused(headersOf(claimsOf({ requestId: 'bound-1', duplicateId: 'bound-1.3', target: '/other' })), 'RP_ERR_BAD_SIGNATURE');
    // The body hash sent must be the one signed, and a signed copy must send one.
    const other = createHash('sha256').update('x').digest('base64url');
    await refused({ ...headersOf(claimsOf({ requestId: 'bound-1', duplicateId: 'bound-1.4' })), 'x-redundant-body-sha256': other }, 'RP_ERR_BAD_SIGNATURE');
    await refused(headersOf(claimsOf({ requestId: 'bound-1', duplicateId: 'bound-1.5', bodyHash: undefined })), 'RP_ERR_BAD_SIGNATURE');
    // A copy captured from the proxy, replayed to another path.
    const h = await validCopyHeaders();
    const before = ran;
    const res = await client.send(`${replica.url}/direct`, { headers: h });
    expect(res.status).toBe(401);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_BAD_SIGNATURE', message: expect.stringContaining('does not match its signature') });
    expect(ran).toBe(before);
  });

  it('refuses a replayed copy', async () => {
    const h = await validCopyHeaders();
    await refused(h, 'RP_ERR_REPLAYED_COPY');
  });

  it('refuses a copy replayed to another upstream', async () => {
    const h = await validCopyHeaders();
    await refused(h, 'RP_ERR_WRONG_UPSTREAM', other.url);
  });

  it('refuses a stale copy, correctly signed and bound to its request but outside the clock skew', async () => {
    await refused(headersOf(claimsOf({ requestId: 'stale-1', duplicateId: 'stale-1.1', timestamp: Date.now() - 10 * 60_000 })), 'RP_ERR_STALE_COPY');
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

describe('a worker without a secret behind a proxy that signs', () => {
  it('serves the copies, and says once on the console that it does not check them; behind a proxy that does not sign, says nothing', async () => {
    const spy = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
    const store = new MemorySessionStore();
    const signed = await startReplica('koa', { id: 'a', store }, () => ({ body: { ok: true } }));
    const unsigned = await startReplica('koa', { id: 'b', store }, () => ({ body: { ok: true } }));
    const signing = redundantProxy({ upstreams: [{ id: 'a', url: signed.url }], store, secret: SECRET });
    const plain = redundantProxy({ upstreams: [{ id: 'b', url: unsigned.url }], store });
    const gws = [await mountGateway('node', signing), await mountGateway('node', plain)];
    const said = () => spy.mock.calls.filter((c) => String(c[0]).includes('does not check them')).map((c) => String(c[0]));
    try {
      for (let i = 0; i < 3; i++) expect((await client.send(`${gws[1]!.url}/ok`)).status).toBe(200);
      expect(said()).toEqual([]);
      for (let i = 0; i < 3; i++) expect((await client.send(`${gws[0]!.url}/ok`)).status).toBe(200);
      expect(said()).toHaveLength(1);
      expect(said()[0]).toContain('worker "a"');
    } finally {
      spy.mockRestore();
      for (const g of gws) await g.close();
      await signing.close();
      await plain.close();
      await signed.close();
      await unsigned.close();
      await store.close();
    }
  });
});

describe('a handler that commits without reading a large signed body', () => {
  it.each(['koa', 'express'] as const)('(%s) is refused as a copy, in JSON with x-redundant-refused: the proxy counts it as a failure, the client gets 502', async (kind) => {
    const store = new MemorySessionStore();
    let committed = 0;
    const replica = await startReplica(kind, { id: 'a', store, secret: SECRET }, async (h) => {
      await h.commitOnce(async () => void committed++); // the body (past the stream's 16 KiB buffer) is never read
      return { body: { ok: true } };
    });
    const refusals: Array<{ code: string; reason: string }> = [];
    replica.worker.on('refused', (e) => refusals.push(e));
    const proxy = redundantProxy({ upstreams: [{ id: 'a', url: replica.url }], store, secret: SECRET });
    proxy.on('error', () => undefined);
    const reports: Array<{ copies: Array<{ status: number | null; outcome: string }> }> = [];
    proxy.on('race:end', (r) => reports.push(r));
    const gw = await mountGateway('node', proxy);
    try {
      const res = await client.send(`${gw.url}/pay`, { method: 'POST', body: JSON.stringify({ pad: 'x'.repeat(100_000) }), headers: { 'content-type': 'application/json' } });
      expect(res.status).toBe(502);
      expect(res.json()).toMatchObject({ code: 'RP_ERR_UPSTREAMS_FAILED' });
      expect(committed).toBe(0);
      expect(refusals.some((r) => r.code === 'RP_ERR_BAD_SIGNATURE' && r.reason.includes('did not arrive in full'))).toBe(true);
      expect(reports[0]!.copies[0]).toMatchObject({ status: 401, outcome: 'failed' });
    } finally {
      await gw.close();
      await proxy.close();
      await replica.close();
      await store.close();
    }
  }, 15_000);
});
