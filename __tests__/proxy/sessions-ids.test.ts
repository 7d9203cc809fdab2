import { afterAll, describe, expect, it } from '@jest/globals';
import { MemorySessionStore, redundantProxy, type RedundantHandle } from '../../lib/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { testClient } from '../helpers/client.js';
import { mountGateway } from '../helpers/gateway.js';
import { startReplica } from '../helpers/replica.js';

// Session ids: the proxy takes back only the ids it handed out, so nobody can
// fix a victim's session to an id of their choosing; the cookie's attributes
// are options.

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

const SECRET = 'session-ids-secret-0123456789';

async function fleet(options: { secret?: string; session?: Record<string, unknown> } = {}) {
  const store = new MemorySessionStore();
  open.push(store);
  const replica = await startReplica('koa', { id: 'a', store, ...(options.secret ? { secret: options.secret } : {}) }, (h: RedundantHandle, req) => {
    const data = h.session.data as { notes?: string[] };
    const note = new URL(req.url ?? '/', 'http://x').searchParams.get('note');
    if (note) h.session.data = { notes: [...(data.notes ?? []), note] };
    return { body: { session: h.session.id, notes: (h.session.data as { notes?: string[] }).notes ?? [] } };
  });
  open.push(replica);
  const proxy = redundantProxy({ upstreams: [{ id: 'a', url: replica.url }], store, ...(options.secret ? { secret: options.secret } : {}), ...(options.session ? { session: options.session } : {}) });
  const gw = await mountGateway('node', proxy);
  open.push(gw, proxy);
  return { store, gw };
}

const cookieOf = (res: { headers: Record<string, string | string[] | undefined> }) => String(res.headers['set-cookie']).split(';')[0]!;

describe.each([
  ['with a secret (signed ids)', SECRET],
  ['without a secret (ids the store knows)', undefined],
] as const)('session ids %s', (_name, secret) => {
  it('an id the client picked is not taken: a fresh one is minted, and the attacker never reads what the victim stored', async () => {
    const { gw } = await fleet({ secret });
    const planted = 'rp_session=attacker-picked-id-0000001';
    // The victim, made to carry the attacker's id, stores something.
    const victim = await client.send(`${gw.url}/save?note=victim-secret`, { headers: { cookie: planted } });
    expect(victim.status).toBe(200);
    const victimSession = (victim.json() as { session: string }).session;
    expect(victimSession).not.toBe('attacker-picked-id-0000001');
    expect(cookieOf(victim)).toBe(`rp_session=${victimSession}`);
    // The attacker, with the id they picked, sees nothing of it.
    const attacker = await client.send(`${gw.url}/read`, { headers: { cookie: planted } });
    expect(attacker.json()).toMatchObject({ notes: [] });
    expect((attacker.json() as { session: string }).session).not.toBe(victimSession);
    // The victim, with the id handed out, keeps their session.
    const again = await client.send(`${gw.url}/read`, { headers: { cookie: cookieOf(victim) } });
    expect(again.json()).toEqual({ session: victimSession, notes: ['victim-secret'] });
  });
});

describe('session ids with a secret', () => {
  it('a handed-out id with one character changed is not taken', async () => {
    const { gw } = await fleet({ secret: SECRET });
    const first = await client.send(`${gw.url}/save?note=mine`);
    const id = cookieOf(first).split('=')[1]!;
    const forged = id.slice(0, -1) + (id.endsWith('A') ? 'B' : 'A');
    const res = await client.send(`${gw.url}/read`, { headers: { cookie: `rp_session=${forged}` } });
    expect(res.json()).toMatchObject({ notes: [] });
  });
});

describe('session cookie attributes', () => {
  it('Secure, SameSite, Domain, Path and Max-Age are options; by default Path=/, HttpOnly, SameSite=Lax', async () => {
    const plain = await fleet({ secret: SECRET });
    const dflt = String((await client.send(`${plain.gw.url}/save?note=x`)).headers['set-cookie']);
    expect(dflt).toMatch(/^rp_session=[A-Za-z0-9_-]{46}; Path=\/; HttpOnly; SameSite=Lax$/);
    const tuned = await fleet({ secret: SECRET, session: { cookie: 'sid', secure: true, sameSite: 'None', domain: 'shop.example', path: '/app', maxAge: 3600 } });
    const set = String((await client.send(`${tuned.gw.url}/save?note=x`)).headers['set-cookie']);
    expect(set).toMatch(/^sid=[A-Za-z0-9_-]{46}; Path=\/app; HttpOnly; SameSite=None; Domain=shop\.example; Max-Age=3600; Secure$/);
  });

  it('refuses attributes that cannot work', () => {
    const up = ['http://127.0.0.1:1'];
    expect(() => redundantProxy({ upstreams: up, session: { sameSite: 'None' } })).toThrow(/session\.sameSite/);
    expect(() => redundantProxy({ upstreams: up, session: { sameSite: 'Loose' as 'Lax' } })).toThrow(/session\.sameSite/);
    expect(() => redundantProxy({ upstreams: up, session: { path: 'app' } })).toThrow(/session\.path/);
    expect(() => redundantProxy({ upstreams: up, session: { domain: 'a b' } })).toThrow(/session\.domain/);
    expect(() => redundantProxy({ upstreams: up, session: { maxAge: -1 } })).toThrow(/session\.maxAge/);
  });
});
