import { createHash } from 'node:crypto';
import { afterAll, describe, expect, it } from '@jest/globals';
import { Agent, request } from 'undici';
import { redundantProxy, type RaceReport } from '../../lib/index.js';
import { frameworks, mountGateway } from '../helpers/gateway.js';
import { after, sleep, startUpstream } from '../helpers/upstream.js';
import { closeAfterEach } from '../helpers/cleanup.js';

const agent = new Agent({ keepAliveTimeout: 500 });
const open = closeAfterEach();
afterAll(() => agent.close());

const MiB = 1024 * 1024;

describe.each(frameworks)('streaming (%s)', (kind) => {
  it('streams a 10 MiB answer to the client without buffering it whole', async () => {
    let firstBytesSeen!: () => void;
    const clientHasFirstBytes = new Promise<void>((r) => (firstBytesSeen = r));
    const expected = createHash('sha256');
    const chunk = Buffer.alloc(64 * 1024);
    const up = await startUpstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(10 * MiB) });
      for (let i = 0; i < 160; i++) {
        chunk.fill(i % 251);
        expected.update(chunk);
        if (!res.write(chunk)) await new Promise((r) => res.once('drain', r));
        // Halfway, wait until the client has bytes: a proxy that buffers the whole body would stall here.
        if (i === 80) await clientHasFirstBytes;
      }
      res.end();
    });
    open.push(up);
    const proxy = redundantProxy({ upstreams: [up.url] });
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    const res = await request(`${gw.url}/big`, { dispatcher: agent });
    expect(res.statusCode).toBe(200);
    const got = createHash('sha256');
    let size = 0;
    for await (const part of res.body) {
      if (size === 0) firstBytesSeen();
      size += (part as Buffer).length;
      got.update(part as Buffer);
    }
    expect(size).toBe(10 * MiB);
    expect(got.digest('hex')).toBe(expected.digest('hex'));
  });

  it('resets the client connection when the winner breaks after its head was sent', async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '100000' });
      res.write('x'.repeat(1000));
      setTimeout(() => res.socket?.destroy(), 30);
    });
    open.push(up);
    const proxy = redundantProxy({ upstreams: [up.url] });
    const reports: RaceReport[] = [];
    proxy.on('race:end', (r) => reports.push(r));
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    const res = await request(`${gw.url}/`, { dispatcher: agent });
    expect(res.statusCode).toBe(200);
    await expect(res.body.text()).rejects.toThrow();
    await sleep(20);
    expect(reports[0]!.outcome).toBe('broken');
  });

  it('a chunked winner that breaks is not passed off as complete either', async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('partial');
      setTimeout(() => res.socket?.destroy(), 30);
    });
    open.push(up);
    const proxy = redundantProxy({ upstreams: [up.url] });
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    const res = await request(`${gw.url}/`, { dispatcher: agent });
    await expect(res.body.text()).rejects.toThrow();
  });

  it('stops every copy when the client disconnects', async () => {
    const ups = [await startUpstream(after(3000)), await startUpstream(after(3000)), await startUpstream(after(3000))];
    open.push(...ups);
    const proxy = redundantProxy({ upstreams: ups.map((u) => u.url) });
    const reports: RaceReport[] = [];
    proxy.on('race:end', (r) => reports.push(r));
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    const ac = new AbortController();
    const pending = request(`${gw.url}/slow`, { dispatcher: agent, signal: ac.signal });
    while (ups.some((u) => u.seen.length === 0)) await sleep(5);
    ac.abort();
    await expect(pending).rejects.toThrow();
    const stopped = await Promise.all(ups.map((u) => u.seen[0]!.stopped));
    expect(stopped).toEqual([true, true, true]);
    while (reports.length === 0) await sleep(5);
    expect(reports[0]!.outcome).toBe('client-closed');
  });
});
