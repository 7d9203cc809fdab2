import http from 'node:http';
import { afterAll, describe, expect, it } from '@jest/globals';
import { MemorySessionStore, redundantProxy, redundantWorker, type RecordAdoptionInput, type RedundantHandle } from '../../lib/index.js';
import { testClient } from '../helpers/client.js';
import { eventually } from '../helpers/replica.js';
import { listen } from '../helpers/upstream.js';

// What the proxy tells the store of the adopted copy's session: `false` when
// there is nothing to promote (the copy said it saved nothing, or its head
// left before it could say and the client has no cookie to come back with),
// so that a store may skip that half of the adoption; unsaid otherwise.

const client = testClient();
const closers: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  for (const close of closers.reverse()) await close();
  await client.close();
});

type Handler = (h: RedundantHandle, res: http.ServerResponse) => void;

async function setup(handler: Handler) {
  const store = new MemorySessionStore();
  const adoptions: RecordAdoptionInput[] = [];
  const record = store.recordAdoption.bind(store);
  store.recordAdoption = (input) => {
    adoptions.push(input);
    return record(input);
  };
  const upstreams = [];
  for (const id of ['a', 'b']) {
    const worker = redundantWorker({ id, store });
    const server = await listen((req, res) =>
      worker(req, res, (err) => (err ? res.destroy() : handler((req as unknown as { redundant: RedundantHandle }).redundant, res))),
    );
    closers.push(server.close);
    upstreams.push({ id, url: server.url });
  }
  const proxy = redundantProxy({ upstreams, store });
  const gateway = await listen(proxy.handler);
  closers.push(gateway.close, () => proxy.close());
  return { url: gateway.url, adoptions, store };
}

const cookieOf = (res: { headers: Record<string, string | string[] | undefined> }) => [res.headers['set-cookie']].flat().find(Boolean)?.split(';')[0];

describe('the adoption of a copy that changed no session', () => {
  it("is recorded with sessionChanged: false when the copy said it saved nothing", async () => {
    const { url, adoptions } = await setup((_h, res) => res.end('read'));
    await client.send(`${url}/r`);
    const [adoption] = await eventually(() => (adoptions.length ? adoptions : null));
    expect(adoption).toMatchObject({ sessionChanged: false });
  });

  it('is recorded before the head, and without the flag, when the copy saved a change', async () => {
    const { url, adoptions } = await setup((h, res) => {
      (h.session.data as { n?: number }).n = 1;
      res.end('changed');
    });
    const res = await client.send(`${url}/w`);
    expect(cookieOf(res)).toBeDefined();
    // Recorded before the answer went out: there already.
    expect(adoptions).toHaveLength(1);
    expect(adoptions[0]).not.toHaveProperty('sessionChanged');
  });

  it('is flagged false for a streamed answer on a session minted for the request (no cookie goes back)', async () => {
    const { url, adoptions } = await setup((_h, res) => {
      res.write('part');
      setImmediate(() => res.end('rest'));
    });
    const res = await client.send(`${url}/s`);
    expect(cookieOf(res)).toBeUndefined();
    const [adoption] = await eventually(() => (adoptions.length ? adoptions : null));
    expect(adoption).toMatchObject({ sessionChanged: false });
  });

  it('is left unsaid for a streamed answer on a session the client already has: a late candidate must still be promoted', async () => {
    let stream = false;
    const { url, adoptions, store } = await setup((h, res) => {
      if (!stream) {
        (h.session.data as { n?: number }).n = 1;
        return void res.end('first');
      }
      // The head leaves before the change: the worker cannot announce it.
      res.write('part');
      (h.session.data as { n?: number }).n = 2;
      setImmediate(() => res.end('rest'));
    });
    const cookie = cookieOf(await client.send(`${url}/w`))!;
    stream = true;
    adoptions.length = 0;
    await client.send(`${url}/s`, { headers: { cookie } });
    const [adoption] = await eventually(() => (adoptions.length ? adoptions : null));
    expect(adoption).not.toHaveProperty('sessionChanged');
    // The candidate saved after the head is promoted by the adoption.
    await eventually(async () => ((await store.getSession(adoption!.sessionId))?.data.n === 2 ? true : null));
  });
});
