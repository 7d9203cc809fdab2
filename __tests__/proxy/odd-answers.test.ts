import { afterAll, describe, expect, it } from '@jest/globals';
import { redundantProxy } from '../../lib/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { testClient } from '../helpers/client.js';
import { frameworks, mountGateway, raceFixture } from '../helpers/gateway.js';
import { after, rawRequest, rawUpstream } from '../helpers/upstream.js';

// Answers that are legal HTTP but unusual: interim 1xx heads before the final
// one, a 304 that states the length of the body it does not carry.

const client = testClient();
const open = closeAfterEach();
afterAll(() => client.close());

describe.each(frameworks)('odd but legal answers (%s)', (kind) => {
  it('an interim 103 Early Hints (and 102 Processing) is never adopted: the client gets the final 200', async () => {
    const hinted = await rawUpstream(
      'HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n' +
        'HTTP/1.1 102 Processing\r\n\r\n' +
        'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nfinal',
    );
    open.push(hinted);
    const proxy = redundantProxy({ upstreams: [{ id: 'hinted', url: hinted.url }], timeout: 3000 });
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    for (let i = 0; i < 3; i++) {
      const res = await client.send(`${gw.url}/page`);
      expect(res.status).toBe(200);
      expect(res.text).toBe('final');
    }
  });

  it('a fast upstream sending Early Hints still wins over a slow one with its final answer', async () => {
    const hinted = await rawUpstream('HTTP/1.1 103 Early Hints\r\nLink: </a.js>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfast');
    open.push(hinted);
    const slow = await raceFixture(open, kind, [after(300, 200, { slow: true })]);
    const proxy = redundantProxy({ upstreams: [{ id: 'hinted', url: hinted.url }, { id: 'slow', url: slow.ups[0]!.url }], timeout: 3000 });
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    const res = await client.send(`${gw.url}/page`);
    expect(res.status).toBe(200);
    expect(res.text).toBe('fast');
    expect(res.headers['x-redundant-served-by']).toBe('hinted');
  });

  it('a 304 with a Content-Length passes with no body, request after request', async () => {
    const up = await rawUpstream('HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n');
    open.push(up);
    const proxy = redundantProxy({ upstreams: [{ id: 'cache', url: up.url }], timeout: 3000 });
    const gw = await mountGateway(kind, proxy);
    open.push(gw, proxy);
    for (let i = 0; i < 3; i++) {
      const res = await rawRequest(gw.url, `GET /thing HTTP/1.1\r\nHost: x\r\nIf-None-Match: "v1"\r\nConnection: close\r\n\r\n`);
      expect(res.status).toBe(304);
      expect(res.headers.etag).toBe('"v1"');
      expect(res.body).toBe('');
    }
  });

  it('a 304 or 204 that states a length reaches an HTTP client as a clean bodiless answer; a HEAD keeps its Content-Length', async () => {
    const notModified = await rawUpstream('HTTP/1.1 304 Not Modified\r\nETag: "v2"\r\nContent-Length: 99\r\n\r\n');
    const noContent = await rawUpstream('HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n');
    const head = await rawUpstream('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 42\r\n\r\n');
    open.push(notModified, noContent, head);
    for (const [up, method, status] of [[notModified, 'GET', 304], [noContent, 'GET', 204], [head, 'HEAD', 200]] as const) {
      const proxy = redundantProxy({ upstreams: [{ id: 'u', url: up.url }], timeout: 3000 });
      const gw = await mountGateway(kind, proxy);
      open.push(gw, proxy);
      for (let i = 0; i < 2; i++) {
        const res = await client.send(`${gw.url}/x`, { method });
        expect(res.status).toBe(status);
        expect(res.body.length).toBe(0);
        if (method === 'HEAD') expect(res.headers['content-length']).toBe('42');
        else expect(res.headers['content-length']).toBeUndefined();
      }
    }
  });

  it("a Node upstream's res.writeEarlyHints() before its 200 reaches the client as the 200", async () => {
    const { gw } = await raceFixture(open, kind, [
      (_req, res) => {
        res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
        setTimeout(() => res.writeHead(200, { 'content-type': 'text/plain' }).end('hinted'), 5);
      },
      after(40, 200, { slow: true }),
    ]);
    const res = await client.send(`${gw.url}/page`);
    expect(res.status).toBe(200);
    expect(res.text).toBe('hinted');
  });
});
