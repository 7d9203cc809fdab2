import { afterAll, describe, expect, it } from '@jest/globals';
import { raceFixture } from '../helpers/gateway.js';
import { testClient } from '../helpers/client.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { after, type Behaviour } from '../helpers/upstream.js';

/** Answers reads at once, updates after `ms`. */
const slowUpdates = (ms: number, status: number, body: unknown): Behaviour => (req, res, b) => after(req.method === 'GET' ? 0 : ms, status, body, worker)(req, res, b);

const worker = { 'x-redundant-worker': '1' };
const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());


describe('an update that no copy commits', () => {
  it('is answered with the first held answer as soon as the last copy answers (a held copy is resumed outside undici parser callbacks)', async () => {
    const { gw, reports } = await raceFixture(open, 'node', [slowUpdates(1, 400, { invalid: 'a' }), slowUpdates(60, 400, { invalid: 'b' })], { timeout: 5000 });
    for (let i = 0; i < 6; i++) await client.send(`${gw.url}/x`);
    const t0 = Date.now();
    const res = await client.send(`${gw.url}/x`, { method: 'POST', body: '{}' });
    expect(res.status).toBe(400);
    expect(res.json()).toEqual({ invalid: 'a' });
    expect(Date.now() - t0).toBeLessThan(2000);
    const r = reports.at(-1)!;
    expect(r.update).toBe(true);
    expect(r.copies).toHaveLength(2);
    expect(r.outcome).toBe('won');
  });
});
