import net from 'node:net';
import { afterAll, describe, expect, it } from '@jest/globals';
import { MemorySessionStore, redundantProxy, type ProxyOptions, type RaceReport } from '../../lib/index.js';
import { withScheduler } from '../../lib/time.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { testClient } from '../helpers/client.js';
import { mountGateway } from '../helpers/gateway.js';
import { eventually, startReplica } from '../helpers/replica.js';
import { after, deadPort, startUpstream } from '../helpers/upstream.js';
import { settle, VirtualTime } from '../helpers/virtual-time.js';

// Failure handling on real upstreams, on the proxy's virtual clock: the
// per-try timeout (a copy given up and replaced), retries of connections
// that failed before the request went out, active health checks.

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

async function gateway(upstreams: ProxyOptions['upstreams'], options: Partial<ProxyOptions>, vt = new VirtualTime()) {
  const proxy = redundantProxy(withScheduler({ upstreams, ...options } as ProxyOptions, vt));
  const gw = await mountGateway('node', proxy);
  open.push(gw, proxy);
  const reports: RaceReport[] = [];
  proxy.on('race:end', (r) => reports.push(r));
  return { proxy, gw, reports, vt };
}

const fates = (r: RaceReport) => r.copies.map((c) => [c.upstream, c.outcome, c.error]);

describe('perTryTimeout', () => {
  it('gives up a copy with no head at its per-try timeout and replaces it with a copy to an upstream the race has not tried', async () => {
    const slow = await startUpstream(after(60_000, 200, { from: 'slow' }));
    const fast = await startUpstream(after(1, 200, { from: 'fast' }));
    open.push(slow, fast);
    const sent: string[] = [];
    const { gw, reports, vt } = await gateway(
      [
        { id: 'slow', url: slow.url },
        { id: 'fast', url: fast.url },
      ],
      // Copies counted as they leave (not as the upstream sees them, which real I/O delays).
      { copies: 1, perTryTimeout: 500, timeout: 10_000, rewriteCopy: (c) => void sent.push(c.copy.upstream) },
    );
    const pending = client.send(`${gw.url}/x`);
    await eventually(() => slow.seen.length === 1);
    await vt.advance(499);
    expect(sent).toEqual(['slow']);
    await vt.advance(1);
    expect(sent).toEqual(['slow', 'fast']);
    const res = await pending;
    expect(res.json()).toEqual({ from: 'fast' });
    const report = await eventually(() => reports[0]);
    expect(fates(report)).toEqual([
      ['slow', 'failed', 'per-try-timeout'],
      ['fast', 'won', null],
    ]);
    // Given up means stopped: its connection was closed.
    expect(await slow.seen[0]!.stopped).toBe(true);
  });

  it('without an upstream left to try, the copy given up is a failure of the request (502), not a wait until the timeout', async () => {
    const slow = await startUpstream(after(60_000));
    open.push(slow);
    const { gw, reports, vt } = await gateway([{ id: 'slow', url: slow.url }], { perTryTimeout: 300, timeout: 10_000 });
    const pending = client.send(`${gw.url}/x`);
    await eventually(() => slow.seen.length === 1);
    await vt.advance(300);
    const res = await pending;
    expect(res.status).toBe(502);
    expect(fates(await eventually(() => reports[0]))).toEqual([['slow', 'failed', 'per-try-timeout']]);
  });

  it('counts a copy given up against its upstream: outlier ejection ejects it', async () => {
    const slow = await startUpstream(after(60_000));
    const fast = await startUpstream(after(1));
    open.push(slow, fast);
    const { proxy, gw, vt } = await gateway(
      [
        { id: 'slow', url: slow.url },
        { id: 'fast', url: fast.url },
      ],
      { copies: 1, perTryTimeout: 100, ejection: { consecutiveFailures: 1 } },
    );
    const ejected: string[] = [];
    proxy.on('upstream:ejected', (e) => ejected.push(e.upstream));
    const pending = client.send(`${gw.url}/x`);
    await eventually(() => slow.seen.length === 1);
    await vt.advance(100);
    expect((await pending).status).toBe(200);
    await eventually(() => ejected.length > 0);
    expect(ejected).toEqual(['slow']);
  });

  it('an update that gave a copy up seals itself before adopting an answer that did not commit: a copy holding the claim makes it 503 outcome-unknown, not the other copy’s 400', async () => {
    const store = new MemorySessionStore();
    let first = true;
    let claimed!: () => void;
    const claimedFirst = new Promise<void>((r) => (claimed = r));
    const handler = async (handle: { claim(): Promise<unknown> }, req: { method?: string }) => {
      if (req.method === 'GET') return { body: { ok: true } };
      if (first) {
        first = false;
        // Claims, then hangs: stopped by the proxy, it never confirms nor releases.
        await handle.claim();
        claimed();
        return new Promise<never>(() => {});
      }
      return { status: 400, body: { invalid: true } };
    };
    const a = await startReplica('express', { id: 'a', store }, handler);
    const b = await startReplica('express', { id: 'b', store }, handler);
    open.push(a, b, store);
    const vt = new VirtualTime();
    const { gw, reports } = await gateway(
      [
        { id: 'a', url: a.url },
        { id: 'b', url: b.url },
      ],
      { store, copies: 1, perTryTimeout: 1000, timeout: 20_000, idempotency: false },
      vt,
    );
    // Reads first: both upstreams show they run the worker.
    for (let i = 0; i < 2; i++) expect((await client.send(`${gw.url}/r`)).status).toBe(200);
    await eventually(() => reports.length === 2);
    const pending = client.send(`${gw.url}/w`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    await claimedFirst;
    await vt.advance(1000);
    const res = await pending;
    expect(res.status).toBe(503);
    expect(res.json()).toMatchObject({ code: 'RP_ERR_OUTCOME_UNKNOWN' });
    const report = await eventually(() => reports[2]);
    expect(report.copies.map((c) => [c.error, c.status])).toEqual([
      ['per-try-timeout', null],
      [null, 400],
    ]);
    expect(report.copies[0]!.outcome).toBe('failed');
    expect(report.outcome).toBe('outcome-unknown');
  });
});

describe('retry', () => {
  it('retries a copy whose connection is refused (a closed port), with a doubling backoff, then reports it failed with its retries', async () => {
    const port = await deadPort();
    const { gw, reports, vt } = await gateway([`http://127.0.0.1:${port}`], { retry: { attempts: 2, backoff: 100 } });
    const pending = client.send(`${gw.url}/x`);
    await eventually(async () => {
      await settle();
      // The request's timeout, and the retry's backoff.
      return vt.pending === 2 || undefined;
    });
    expect(vt.nextAt).toBe(vt.now() + 100);
    await vt.advance(100);
    // The second retry waits twice as long.
    await eventually(async () => {
      await settle();
      return vt.pending === 2 || undefined;
    });
    expect(vt.nextAt).toBe(vt.now() + 200);
    await vt.advance(200);
    const res = await pending;
    expect(res.status).toBe(502);
    const report = await eventually(() => reports[0]);
    expect(report.copies.map((c) => [c.outcome, c.error, c.retries])).toEqual([['failed', 'ECONNREFUSED', 2]]);
  });

  it('retries a copy whose connection the upstream resets on accept, and adopts the answer of the retry', async () => {
    let accepted = 0;
    const server = net.createServer((socket) => {
      accepted++;
      if (accepted <= 2) return socket.resetAndDestroy();
      socket.once('data', () => socket.end('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{"ok":true}'));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    open.push({ close: () => new Promise<void>((r) => server.close(() => r())) });
    const { gw, reports, vt } = await gateway([`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`], { retry: { attempts: 3, backoff: 10 } });
    const pending = client.send(`${gw.url}/x`);
    for (const [n, wait] of [[1, 10], [2, 20]] as const) {
      await eventually(async () => {
        await settle();
        return (accepted === n && vt.pending === 2) || undefined;
      });
      await vt.advance(wait);
    }
    const res = await pending;
    expect(res.json()).toEqual({ ok: true });
    expect(accepted).toBe(3);
    expect((await eventually(() => reports[0])).copies.map((c) => [c.outcome, c.retries])).toEqual([['won', 2]]);
  });

  it('without the option, a reset on accept fails the copy at once', async () => {
    let accepted = 0;
    const server = net.createServer((socket) => {
      accepted++;
      socket.resetAndDestroy();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    open.push({ close: () => new Promise<void>((r) => server.close(() => r())) });
    const { gw, reports } = await gateway([`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`], {});
    expect((await client.send(`${gw.url}/x`)).status).toBe(502);
    expect(accepted).toBe(1);
    expect((await eventually(() => reports[0])).copies[0]!.retries).toBeUndefined();
  });

  it('never retries a copy whose request went out: an upstream that reads it and closes the connection fails it once', async () => {
    let accepted = 0;
    const server = net.createServer((socket) => {
      accepted++;
      socket.once('data', () => socket.destroy());
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    open.push({ close: () => new Promise<void>((r) => server.close(() => r())) });
    const { gw, reports, vt } = await gateway([`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`], { retry: { attempts: 3, backoff: 10 } });
    const res = await client.send(`${gw.url}/x`);
    expect(res.status).toBe(502);
    expect(accepted).toBe(1);
    expect(vt.pending).toBe(0);
    expect((await eventually(() => reports[0])).copies.map((c) => [c.outcome, c.retries])).toEqual([['failed', undefined]]);
  });
});

describe('healthCheck', () => {
  it('an upstream that fails its probes receives no copies until it passes again; events, metrics and close()', async () => {
    let healthy = true;
    const probes: string[] = [];
    const behaviour = (id: string) => (req: { url?: string }, res: import('node:http').ServerResponse) => {
      if (req.url === '/base/healthz') {
        probes.push(id);
        res.writeHead(id === 'a' && !healthy ? 503 : 200).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ from: id }));
    };
    const a = await startUpstream(behaviour('a'));
    const b = await startUpstream(behaviour('b'));
    open.push(a, b);
    const { proxy, gw, reports, vt } = await gateway(
      [
        { id: 'a', url: `${a.url}/base` },
        { id: 'b', url: `${b.url}/base` },
      ],
      { copies: 1, healthCheck: { path: '/healthz', interval: 1000, timeout: 500, unhealthyThreshold: 2, healthyThreshold: 2 } },
    );
    const log: string[] = [];
    proxy.on('upstream:unhealthy', (e) => log.push(`unhealthy ${e.upstream} ${e.inARow} ${e.status}`));
    proxy.on('upstream:healthy', (e) => log.push(`healthy ${e.upstream} ${e.inARow}`));
    const servedBy = async (n: number) => {
      const out: string[] = [];
      for (let i = 0; i < n; i++) out.push((await client.send(`${gw.url}/x`)).json().from as string);
      return out.sort();
    };
    const probeRound = async () => {
      const before = probes.length;
      await vt.advance(1000);
      await eventually(() => probes.length >= before + 2);
      await settle();
    };
    await eventually(() => probes.length >= 2);
    expect(proxy.metrics().upstreams.a!.healthy).toBe(true);
    expect(await servedBy(2)).toEqual(['a', 'b']);

    healthy = false;
    await probeRound();
    expect(log).toEqual([]);
    await probeRound();
    expect(log).toEqual(['unhealthy a 2 503']);
    expect(proxy.metrics().upstreams.a!.healthy).toBe(false);
    expect(await servedBy(4)).toEqual(['b', 'b', 'b', 'b']);

    healthy = true;
    await probeRound();
    expect(await servedBy(2)).toEqual(['b', 'b']);
    await probeRound();
    expect(log).toEqual(['unhealthy a 2 503', 'healthy a 2']);
    expect(await servedBy(2)).toEqual(['a', 'b']);
    await eventually(() => reports.length === 10 || undefined);
    expect(reports.length).toBe(10);

    await proxy.close();
    const after = probes.length;
    await vt.advance(5000);
    await settle();
    expect(probes.length).toBe(after);
    expect(vt.pending).toBe(0);
  });

  it('when every upstream fails its probes, health is not looked at: copies still go out', async () => {
    const down = (req: { url?: string }, res: import('node:http').ServerResponse) => void res.writeHead(req.url === '/healthz' ? 500 : 200).end('{}');
    const a = await startUpstream(down);
    const b = await startUpstream(down);
    open.push(a, b);
    const { proxy, gw, vt } = await gateway([a.url, b.url], { healthCheck: { path: '/healthz', interval: 100, unhealthyThreshold: 1 } });
    const unhealthy: string[] = [];
    proxy.on('upstream:unhealthy', (e) => unhealthy.push(e.upstream));
    await eventually(async () => {
      await vt.advance(100);
      return unhealthy.length === 2 || undefined;
    });
    expect((await client.send(`${gw.url}/x`)).status).toBe(200);
  });
});

describe('options', () => {
  it.each([
    [{ perTryTimeout: 30_000 }, 'perTryTimeout'],
    [{ perTryTimeout: 0 }, 'perTryTimeout'],
    [{ retry: { attempts: 0 } }, 'retry.attempts'],
    [{ retry: { backoff: 100, maxBackoff: 10 } }, 'retry.maxBackoff'],
    [{ retry: true }, 'retry'],
    [{ healthCheck: { path: 'healthz' } }, 'healthCheck.path'],
    [{ healthCheck: { interval: -1 } }, 'healthCheck.interval'],
    [{ healthCheck: { unhealthyThreshold: 1.5 } }, 'healthCheck.unhealthyThreshold'],
  ])('%j is refused with a stable code, naming %s', (bad, name) => {
    expect(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], ...(bad as object) })).toThrow(expect.objectContaining({ code: 'RP_ERR_INVALID_OPTION', message: expect.stringContaining(name) }));
  });
});
