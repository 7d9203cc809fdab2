import { afterAll, describe, expect, it } from '@jest/globals';
import { Agent, request } from 'undici';
import { redundantProxy } from '../../lib/index.js';
import { mountGateway } from '../helpers/gateway.js';
import { startUpstream } from '../helpers/upstream.js';

function resources(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of process.getActiveResourcesInfo()) out[r] = (out[r] ?? 0) + 1;
  return out;
}

describe('after a thousand races', () => {
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  afterAll(() => void process.off('unhandledRejection', onUnhandled));

  it('leaves no socket or timer open and no promise rejection unhandled', async () => {
    const before = resources();
    // Three upstreams with varied latency and the odd failure, so every path of the race runs.
    let n = 0;
    const ups = await Promise.all(
      [0, 1, 2].map(() =>
        startUpstream((_req, res) => {
          const i = n++;
          if (i % 37 === 0) return void res.socket?.destroy();
          const status = i % 11 === 0 ? 503 : 200;
          setTimeout(() => {
            if (!res.destroyed) res.writeHead(status, { 'content-type': 'text/plain' }).end(`r${i}`);
          }, i % 5);
        }),
      ),
    );
    const proxy = redundantProxy({ upstreams: ups.map((u) => u.url), connections: 16 });
    const gw = await mountGateway('node', proxy);
    const client = new Agent({ connections: 8, keepAliveTimeout: 1000 });
    let ok = 0;
    const worker = async (count: number) => {
      for (let i = 0; i < count; i++) {
        const res = await request(`${gw.url}/r${i}`, { dispatcher: client });
        await res.body.text();
        if (res.statusCode < 600) ok++;
      }
    };
    await Promise.all(Array.from({ length: 8 }, () => worker(125)));
    expect(ok).toBe(1000);
    // A race is reported once its losers' grace is over (a few ms after the answer).
    for (let i = 0; i < 100 && proxy.metrics().requests < 1000; i++) await new Promise((r) => setTimeout(r, 10));
    expect(proxy.metrics().requests).toBe(1000);

    // While the gateway is still up: no per-race timer lingers, and the upstream
    // pools stay bounded however many copies were stopped.
    const during = resources();
    expect((during.Timeout ?? 0) - (before.Timeout ?? 0)).toBeLessThanOrEqual(4);
    expect(during.TCPSocketWrap ?? 0).toBeLessThanOrEqual((before.TCPSocketWrap ?? 0) + 3 * 16 * 2 + 8 * 2);

    await client.close();
    await proxy.close();
    await gw.close();
    await Promise.all(ups.map((u) => u.close()));
    await new Promise((r) => setTimeout(r, 50));
    const afterAllClosed = resources();
    expect(afterAllClosed.TCPSocketWrap ?? 0).toBeLessThanOrEqual(before.TCPSocketWrap ?? 0);
    expect(afterAllClosed.TCPServerWrap ?? 0).toBeLessThanOrEqual(before.TCPServerWrap ?? 0);
    expect(afterAllClosed.Timeout ?? 0).toBeLessThanOrEqual(before.Timeout ?? 0);
    expect(unhandled).toEqual([]);
  });
});
