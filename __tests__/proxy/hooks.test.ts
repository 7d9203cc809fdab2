import { afterAll, describe, expect, it } from '@jest/globals';
import { MemorySessionStore, redundantProxy, type AdoptedAnswer, type OutgoingCopy, type ProxyOptions } from '../../lib/index.js';
import { withScheduler } from '../../lib/time.js';
import { testClient } from '../helpers/client.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { frameworks, mountGateway, raceFixture, type Framework } from '../helpers/gateway.js';
import { eventually, startReplica } from '../helpers/replica.js';
import { after, type Behaviour } from '../helpers/upstream.js';
import { VirtualTime } from '../helpers/virtual-time.js';

// The gateway's hooks, through real upstreams in Koa, Express and node:http:
// `rewriteCopy` on each copy as it leaves, `rewriteAnswer` on the adopted
// answer's head.

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

const setup = (kind: Framework, behaviours: Behaviour[], options: Partial<ProxyOptions> = {}) => raceFixture(open, kind, behaviours, options);

/** An upstream that redirects and sets a cookie for its own host. */
const redirecting: Behaviour = (_req, res) => {
  res.writeHead(302, { location: 'http://app.internal:3000/next', 'set-cookie': ['a=1; Domain=app.internal; Path=/', 'b=2; Domain=app.internal'], 'content-length': '4' });
  res.end('gone');
};

describe.each(frameworks)('rewriteCopy (%s)', (kind) => {
  it('changes the headers and the path of each copy, and is shown the request id, the copy and the client request', async () => {
    const seen: Array<Omit<OutgoingCopy, 'req' | 'headers'> & { url: string | undefined; had: string | string[] | undefined }> = [];
    const { ups, gw } = await setup(kind, [after(5), after(5)], {
      rewriteCopy: (c) => {
        seen.push({ requestId: c.requestId, copy: { ...c.copy }, method: c.method, path: c.path, url: c.req.url, had: c.headers['x-drop'] });
        c.headers.authorization = `Bearer for-${c.copy.upstream}`;
        delete c.headers['x-drop'];
        c.path = c.path.replace(/^\/api/, '');
      },
    });
    const res = await client.send(`${gw.url}/api/items?x=1`, { headers: { 'x-drop': 'secret', 'x-keep': 'yes' } });
    expect(res.status).toBe(200);
    for (const [i, u] of ups.entries()) {
      expect(u.seen[0]!.url).toBe('/items?x=1');
      expect(u.seen[0]!.headers.authorization).toBe(`Bearer for-u${i}`);
      expect(u.seen[0]!.headers['x-drop']).toBeUndefined();
      expect(u.seen[0]!.headers['x-keep']).toBe('yes');
      // The protocol's headers are still there, added after the hook.
      expect(u.seen[0]!.headers['x-redundant-request-id']).toBe(res.headers['x-request-id']);
    }
    expect(seen.map((s) => s.copy.upstream).sort()).toEqual(['u0', 'u1']);
    for (const s of seen) {
      expect(s).toMatchObject({ requestId: res.headers['x-request-id'], method: 'GET', path: '/api/items?x=1', had: 'secret' });
      expect(s.copy).toMatchObject({ of: 2, hedged: false, duplicateId: `${res.headers['x-request-id']}.${s.copy.index}` });
    }
    expect(seen[0]!.url).toMatch(/items\?x=1$/);
  });

  it('refuses to set an x-redundant-* header: 500 RP_ERR_HOOK_FAILED, an error event, and no copy leaves', async () => {
    const { ups, gw, errors } = await setup(kind, [after(5), after(5)], {
      rewriteCopy: (c) => {
        c.headers['X-Redundant-Update'] = '0';
      },
    });
    const res = await client.send(`${gw.url}/x`);
    expect(res.status).toBe(500);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_HOOK_FAILED', requestId: res.headers['x-request-id'] });
    expect(ups.map((u) => u.seen.length)).toEqual([0, 0]);
    const e = await eventually(() => errors[0]);
    expect(e).toMatchObject({ source: 'hook', requestId: res.headers['x-request-id'] });
    expect((e.error as Error).message).toMatch(/rewriteCopy set the header `X-Redundant-Update`: x-redundant-\* headers are the wire protocol's/);
  });

  it('a hook that throws fails the request with 500 RP_ERR_HOOK_FAILED; the client is not told its message', async () => {
    const { ups, gw, errors, reports } = await setup(kind, [after(5)], {
      rewriteCopy: () => {
        throw new Error('token service down');
      },
    });
    const res = await client.send(`${gw.url}/x`);
    expect(res.status).toBe(500);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_HOOK_FAILED' });
    expect(res.text).not.toMatch(/token service/);
    expect(ups[0]!.seen).toHaveLength(0);
    expect(((await eventually(() => errors[0])).error as Error).message).toBe('rewriteCopy threw: token service down');
    expect((await eventually(() => reports[0])).outcome).toBe('failed');
  });
});

describe('rewriteCopy, what it may not do', () => {
  it.each([
    ['a path that is not origin-form', (c: OutgoingCopy) => void (c.path = 'http://elsewhere/x'), /left the path "http:\/\/elsewhere\/x"/],
    ['the body framing', (c: OutgoingCopy) => void (c.headers['content-length'] = '3'), /`content-length`/],
    ['a header value with a newline', (c: OutgoingCopy) => void (c.headers['x-a'] = 'a\r\nb'), /`x-a`, which cannot be sent/],
    ['a promise', (async () => {}) as unknown as (c: OutgoingCopy) => void, /must be synchronous/],
  ])('refuses %s', async (_what, hook, message) => {
    const { ups, gw, errors } = await setup('node', [after(5)], { rewriteCopy: hook });
    const res = await client.send(`${gw.url}/x`);
    expect([res.status, res.json().code]).toEqual([500, 'RP_ERR_HOOK_FAILED']);
    expect(ups[0]!.seen).toHaveLength(0);
    expect(((await eventually(() => errors[0])).error as Error).message).toMatch(message);
  });

  it('runs for a hedge as it leaves, and says it is one', async () => {
    const vt = new VirtualTime();
    const copies: Array<OutgoingCopy['copy']> = [];
    const { ups, gw } = await setup('node', [after(60_000), after(5)], withScheduler({ hedge: { delay: 50 }, rewriteCopy: (c: OutgoingCopy) => void copies.push({ ...c.copy }) }, vt));
    const pending = client.send(`${gw.url}/`);
    await eventually(() => ups[0]!.seen.length === 1);
    expect(copies).toEqual([{ index: 1, of: 2, duplicateId: expect.any(String), upstream: 'u0', hedged: false }]);
    await vt.advance(50);
    expect((await pending).status).toBe(200);
    expect(copies[1]).toMatchObject({ index: 2, upstream: 'u1', hedged: true });
    // The loser's grace, on the same clock, so the race ends.
    await vt.advance(1000);
  });

  it('runs before signing: a worker with the secret accepts the path the hook left', async () => {
    const store = new MemorySessionStore();
    const secret = 'a-secret-of-enough-length-for-hmac';
    const targets: string[] = [];
    const replica = await startReplica('express', { id: 'r1', store, secret }, (_h, req) => {
      targets.push(req.url!);
      return { body: { ok: true } };
    });
    const proxy = redundantProxy({ upstreams: [{ id: 'r1', url: replica.url }], store, secret, rewriteCopy: (c) => void (c.path = `/v2${c.path}`) });
    const gw = await mountGateway('node', proxy);
    open.push(store, replica, gw, proxy);
    const res = await client.send(`${gw.url}/orders`);
    expect(res.status).toBe(200);
    expect(targets).toEqual(['/v2/orders']);
  });
});

describe.each(frameworks)('rewriteAnswer (%s)', (kind) => {
  it('rewrites the Location and the cookie domains of the adopted answer, and is shown the request id and the copy', async () => {
    const shown: Array<Pick<AdoptedAnswer, 'requestId' | 'copy' | 'status'>> = [];
    const { gw } = await setup(kind, [redirecting], {
      rewriteAnswer: (a) => {
        shown.push({ requestId: a.requestId, copy: { ...a.copy }, status: a.status });
        if (typeof a.headers.location === 'string') a.headers.location = a.headers.location.replace('http://app.internal:3000', 'https://example.com');
        const cookies = a.headers['set-cookie'];
        if (Array.isArray(cookies)) a.headers['set-cookie'] = cookies.map((c) => c.replace(/Domain=app\.internal/i, 'Domain=example.com'));
        a.headers['x-gateway'] = 'rewritten';
      },
    });
    const res = await client.send(`${gw.url}/start`);
    expect(res.status).toBe(302);
    expect(res.headers.location).toBe('https://example.com/next');
    expect(res.headers['set-cookie']).toEqual(['a=1; Domain=example.com; Path=/', 'b=2; Domain=example.com']);
    expect(res.headers['x-gateway']).toBe('rewritten');
    expect(res.headers['x-redundant-served-by']).toBe('u0');
    expect(res.text).toBe('gone');
    expect(shown).toEqual([{ requestId: res.headers['x-request-id'], status: 302, copy: { index: 1, of: 1, duplicateId: `${res.headers['x-request-id']}.1`, upstream: 'u0', hedged: false } }]);
  });

  it('an async hook is waited for, and may change the status; the body follows whole', async () => {
    const big = 'x'.repeat(256 * 1024);
    const { gw } = await setup(kind, [(_req, res) => void res.end(big)], {
      rewriteAnswer: async (a) => {
        await new Promise((r) => setTimeout(r, 30));
        a.status = 203;
      },
    });
    const res = await client.send(`${gw.url}/`);
    expect(res.status).toBe(203);
    expect(res.text).toBe(big);
  });

  it('a hook that throws, or rejects: 500 RP_ERR_HOOK_FAILED and an error event, never a crash', async () => {
    let n = 0;
    const { gw, errors, reports } = await setup(kind, [after(5)], {
      rewriteAnswer: (): void | Promise<void> => {
        if (++n === 1) throw new Error('sync boom');
        return Promise.reject(new Error('async boom'));
      },
    });
    for (const message of ['rewriteAnswer threw: sync boom', 'rewriteAnswer rejected: async boom']) {
      const res = await client.send(`${gw.url}/`);
      expect(res.status).toBe(500);
      expect(res.json()).toMatchObject({ code: 'RP_ERR_HOOK_FAILED', message: "the gateway's rewriteAnswer hook failed" });
      const e = await eventually(() => errors.find((x) => (x.error as Error).message === message));
      expect(e).toMatchObject({ source: 'hook', requestId: res.headers['x-request-id'] });
    }
    await eventually(() => reports.length === 2);
    expect(reports.map((r) => r.outcome)).toEqual(['failed', 'failed']);
  });
});

describe('rewriteAnswer, what it may not do', () => {
  it.each([
    ['a status that is not final', (a: AdoptedAnswer) => void (a.status = 101), /left the status 101/],
    ['a status that is not an integer', (a: AdoptedAnswer) => void (a.status = Number('x')), /left the status NaN/],
    ['a header value with a newline', (a: AdoptedAnswer) => void (a.headers.location = 'a\nb'), /`location`, which cannot be sent/],
  ])('refuses %s', async (_what, hook, message) => {
    const { gw, errors } = await setup('node', [after(5)], { rewriteAnswer: hook });
    const res = await client.send(`${gw.url}/x`);
    expect([res.status, res.json().code]).toEqual([500, 'RP_ERR_HOOK_FAILED']);
    expect(((await eventually(() => errors[0])).error as Error).message).toMatch(message);
  });

  it('a hook that never settles is bounded by the request timeout: 504', async () => {
    const vt = new VirtualTime();
    let called = false;
    const { gw, reports } = await setup('node', [after(5)], withScheduler({ timeout: 1000, rewriteAnswer: () => ((called = true), new Promise<void>(() => {})) }, vt));
    const pending = client.send(`${gw.url}/`);
    await eventually(() => called);
    await vt.advance(999);
    expect(reports).toHaveLength(0);
    await vt.advance(1);
    const res = await pending;
    expect([res.status, res.json().code]).toEqual([504, 'RP_ERR_TIMEOUT']);
  });

  it('is not called without an adopted answer: an upstream 5xx passes through as it came', async () => {
    let calls = 0;
    const { gw } = await setup('node', [after(5, 503, { down: true }, { location: 'http://app.internal/x' })], { rewriteAnswer: () => void calls++ });
    const res = await client.send(`${gw.url}/`);
    expect(res.status).toBe(503);
    expect(res.headers.location).toBe('http://app.internal/x');
    expect(calls).toBe(0);
  });
});

describe('isUpdate', () => {
  it('that throws fails the request with 500 RP_ERR_HOOK_FAILED and its request id, sends no copy, and is an error event (source hook)', async () => {
    const { ups, gw, errors } = await setup('node', [after(1)], {
      isUpdate: () => {
        throw new Error('no route table');
      },
    });
    const res = await client.send(`${gw.url}/x`, { method: 'POST', body: '{}' });
    expect(res.status).toBe(500);
    const body = res.json() as { code: string; requestId: string };
    expect(body).toMatchObject({ code: 'RP_ERR_HOOK_FAILED', message: "the gateway's isUpdate hook failed" });
    expect(body.requestId).toBe(res.headers['x-request-id']);
    expect(ups[0]!.seen).toHaveLength(0);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ source: 'hook', requestId: body.requestId });
    expect(((errors[0] as { error: Error }).error.cause as Error).message).toBe('no route table');
  });
});
