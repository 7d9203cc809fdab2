import { afterAll, describe, expect, it } from '@jest/globals';
import { redundantProxy, type ProxyOptions } from '../../lib/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { testClient } from '../helpers/client.js';
import { frameworks, mountGateway, raceFixture, type Framework } from '../helpers/gateway.js';
import { eventually } from '../helpers/replica.js';
import { after, deadPort, startUpstream, type Behaviour } from '../helpers/upstream.js';

// `select` on real upstream servers: a quorum of identical answers, or a
// function choosing among whole answers. The race's decisions in every
// order are covered with scripted upstreams in race-logic.test.ts.

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

const setup = (kind: Framework, behaviours: Behaviour[], options: Partial<ProxyOptions>) => raceFixture(open, kind, behaviours, options);

describe.each(frameworks)('select (%s)', (kind) => {
  it('{ quorum: 2 } answers with what two replicas agree on, not with the fastest answer', async () => {
    const { gw, reports, proxy } = await setup(kind, [after(5, 200, { v: 'stale' }), after(30, 200, { v: 'fresh' }), after(60, 200, { v: 'fresh' })], { select: { quorum: 2 } });
    const res = await client.send(`${gw.url}/item`);
    expect(res.status).toBe(200);
    expect(res.json()).toEqual({ v: 'fresh' });
    expect(res.headers['x-redundant-served-by']).toBe('u1');
    const r = await eventually(() => reports[0]);
    expect(r.outcome).toBe('won');
    expect(r.copies.map((c) => c.outcome)).toEqual(['outvoted', 'won', 'agreed']);
    const m = proxy.metrics().upstreams;
    expect([m.u0!.outcomes.outvoted, m.u1!.outcomes.won, m.u2!.outcomes.agreed]).toEqual([1, 1, 1]);
  });

  it('answers 502 RP_ERR_NO_QUORUM as soon as no two replicas can agree, stopping the copy still out', async () => {
    const { ups, gw } = await setup(kind, [after(5, 200, { v: 1 }), after(20, 200, { v: 2 }), after(5_000, 200, { v: 3 })], { select: { quorum: 3 } });
    const t0 = Date.now();
    const res = await client.send(`${gw.url}/item`);
    expect(Date.now() - t0).toBeLessThan(3_000);
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_NO_QUORUM', requestId: res.headers['x-request-id'] });
    expect(await ups[2]!.seen[0]!.stopped).toBe(true);
  });
});

describe('select on node:http', () => {
  it('compares large answers byte for byte, across many chunks', async () => {
    const big = Buffer.alloc(300_000, 'a');
    const other = Buffer.from(big);
    other[299_999] = 0x62; // differs in the last byte only
    const send = (body: Buffer, ms: number): Behaviour => (_req, res) => {
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/octet-stream' }); // chunked: no content-length
        for (let i = 0; i < body.length; i += 16_384) res.write(body.subarray(i, i + 16_384));
        res.end();
      }, ms);
    };
    const { gw, reports } = await setup('node', [send(other, 1), send(big, 20), send(big, 40)], { select: { quorum: 2 } });
    const res = await client.send(`${gw.url}/blob`);
    expect(res.status).toBe(200);
    expect(res.body.equals(big)).toBe(true);
    const r = await eventually(() => reports[0]);
    expect(r.copies.map((c) => c.outcome)).toEqual(['outvoted', 'won', 'agreed']);
  });

  it('an answer larger than maxBodySize cannot be compared: it is rejected, and its replica is not ejected for it', async () => {
    const { gw, reports, proxy } = await setup('node', [after(1, 200, { pad: 'x'.repeat(500) }), after(10, 200, { v: 1 }), after(20, 200, { v: 1 })], {
      select: { quorum: 2 },
      maxBodySize: 100,
      ejection: { consecutiveFailures: 1 },
    });
    for (let i = 1; i <= 2; i++) {
      const res = await client.send(`${gw.url}/`);
      expect(res.json()).toEqual({ v: 1 });
      await eventually(() => reports.length === i || undefined);
    }
    expect(reports[0]!.copies.find((c) => c.upstream === 'u0')).toMatchObject({ outcome: 'rejected', error: expect.stringMatching(/maxBodySize/) });
    expect(proxy.metrics().upstreams.u0!.ejections).toBe(0);
  });

  it('a replica that is down counts against the quorum', async () => {
    const dead = `http://127.0.0.1:${await deadPort()}`;
    const up = await startUpstream(after(5, 200, { v: 1 }));
    open.push(up);
    const proxy = redundantProxy({ upstreams: [up.url, dead], select: { quorum: 2 } });
    const gw = await mountGateway('node', proxy);
    open.push(gw, proxy);
    const res = await client.send(`${gw.url}/`);
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_NO_QUORUM' });
  });

  it('a select function chooses among whole answers: the highest version, once two are in', async () => {
    const versioned = (v: number, ms: number) => after(ms, 200, { v }, { 'x-version': String(v) });
    const { gw, reports } = await setup('node', [versioned(3, 1), versioned(7, 20), versioned(5, 3_000)], {
      select: (answers, { pending }) =>
        answers.length < 2 && pending > 0 ? undefined : answers.reduce((a, b) => (Number(b.headers['x-version']) > Number(a.headers['x-version']) ? b : a)),
    });
    const res = await client.send(`${gw.url}/`);
    expect(res.json()).toEqual({ v: 7 });
    expect(res.headers['x-redundant-served-by']).toBe('u1');
    const r = await eventually(() => reports[0]);
    expect(r.copies.map((c) => c.outcome)).toEqual(['outvoted', 'won', 'stopped']);
  });

  it('a select function that throws gives 502 RP_ERR_NO_SELECTION and an error event naming select', async () => {
    const { gw, errors } = await setup('node', [after(1, 200, { v: 1 }), after(5, 200, { v: 2 })], {
      select: () => {
        throw new Error('select bug');
      },
    });
    const res = await client.send(`${gw.url}/`);
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_NO_SELECTION' });
    expect(errors).toEqual([{ requestId: expect.any(String), source: 'select', error: expect.objectContaining({ message: 'select bug' }) }]);
  });

  it('hedged with a quorum: the quorum’s copies leave at once, the third only when they disagree', async () => {
    const { ups, gw } = await setup('node', [after(5, 200, { v: 1 }), after(10, 200, { v: 1 }), after(1, 200, { v: 1 })], { select: { quorum: 2 }, hedge: { delay: 2_000 } });
    const t0 = Date.now();
    const res = await client.send(`${gw.url}/`);
    expect(Date.now() - t0).toBeLessThan(1_500);
    expect(res.json()).toEqual({ v: 1 });
    expect(ups.map((u) => u.seen.length)).toEqual([1, 1, 0]);
  });
});
