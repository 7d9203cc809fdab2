import net from 'node:net';
import { afterAll, describe, expect, it } from '@jest/globals';
import { redundantProxy } from '../../lib/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { testClient } from '../helpers/client.js';
import { frameworks, mountGateway } from '../helpers/gateway.js';
import { after, startUpstream } from '../helpers/upstream.js';

// Request bodies are bounded in time (idle and total) and in the bytes
// buffered over all requests at once.

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

/** Sends a head declaring `length` bytes, then `parts` (each after its delay); resolves with the answer and when it came. */
function slowUpload(url: string, length: number, parts: Array<[number, string]>): Promise<{ status: number; body: string; ms: number }> {
  const { hostname, port } = new URL(url);
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(port), hostname, () => {
      sock.write(`POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: ${length}\r\n\r\n`);
      let at = 0;
      for (const [delay, text] of parts) {
        at += delay;
        setTimeout(() => !sock.destroyed && sock.write(text), at);
      }
    });
    const chunks: Buffer[] = [];
    sock.on('data', (c) => chunks.push(c));
    sock.on('error', reject);
    sock.on('close', () => {
      const raw = Buffer.concat(chunks).toString('latin1');
      const [head = '', ...rest] = raw.split('\r\n\r\n');
      resolve({ status: Number(head.split(' ')[1]), body: rest.join('\r\n\r\n'), ms: Date.now() - t0 });
    });
  });
}

describe.each(frameworks)('request body limits (%s)', (kind) => {
  async function gateway(options: Record<string, unknown>) {
    const up = await startUpstream(after(0));
    open.push(up);
    const proxy = redundantProxy({ upstreams: [up.url], ...options });
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    return { up, gw, proxy };
  }

  it('a body that stalls gets 408 RP_ERR_BODY_TIMEOUT after bodyIdleTimeout, the connection closed, nothing sent upstream', async () => {
    const { up, gw } = await gateway({ bodyIdleTimeout: 200, bodyTimeout: 5000 });
    const res = await slowUpload(gw.url, 1000, [[0, 'x']]);
    expect(res.status).toBe(408);
    expect(JSON.parse(res.body.slice(res.body.indexOf('{')))).toMatchObject({ code: 'RP_ERR_BODY_TIMEOUT' });
    expect(res.ms).toBeLessThan(3000);
    expect(up.seen).toHaveLength(0);
  });

  it('a body that trickles in, never idle long, gets 408 after bodyTimeout', async () => {
    const { up, gw } = await gateway({ bodyIdleTimeout: 300, bodyTimeout: 600 });
    const parts = Array.from({ length: 40 }, () => [100, 'x'] as [number, string]);
    const res = await slowUpload(gw.url, 1000, parts);
    expect(res.status).toBe(408);
    expect(res.body).toContain('bodyTimeout');
    expect(res.ms).toBeLessThan(3000);
    expect(up.seen).toHaveLength(0);
  });

  it('bodies buffered at once are bounded: past maxBufferedBytes a request gets 503 RP_ERR_OVERLOADED at once; the budget comes back', async () => {
    const { gw, proxy } = await gateway({ maxBodySize: 1500, maxBufferedBytes: 2000, bodyIdleTimeout: 800, bodyTimeout: 5000 });
    // Holds 1500 of the 2000 bytes while it (never) sends its body.
    const hog = slowUpload(gw.url, 1500, [[0, 'x']]);
    await new Promise((r) => setTimeout(r, 100));
    const refused = await slowUpload(gw.url, 1000, [[0, 'y'.repeat(1000)]]);
    expect(refused.status).toBe(503);
    expect(refused.body).toContain('RP_ERR_OVERLOADED');
    expect(refused.ms).toBeLessThan(500);
    // A small one still fits.
    const small = await client.send(`${gw.url}/small`, { method: 'POST', body: 'z'.repeat(400) });
    expect(small.status).toBe(200);
    // Once the hog times out, its share is free again.
    expect((await hog).status).toBe(408);
    const later = await client.send(`${gw.url}/later`, { method: 'POST', body: 'w'.repeat(1000) });
    expect(later.status).toBe(200);
    void proxy;
  });
});

describe('request body options', () => {
  it('are checked at construction', () => {
    const up = ['http://127.0.0.1:1'];
    expect(() => redundantProxy({ upstreams: up, bodyTimeout: 0 })).toThrow(/bodyTimeout/);
    expect(() => redundantProxy({ upstreams: up, bodyIdleTimeout: -5 })).toThrow(/bodyIdleTimeout/);
    expect(() => redundantProxy({ upstreams: up, maxBodySize: 1000, maxBufferedBytes: 999 })).toThrow(/maxBufferedBytes/);
  });
});
