import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { InvalidOptionError, isRedundantProxyError, redundantProxy, type ProxyOptions, type RaceReport } from '../../lib/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { testClient } from '../helpers/client.js';
import { mountGateway } from '../helpers/gateway.js';
import { eventually } from '../helpers/replica.js';
import { httpsUpstream, makePki, type TestPki, type TlsUpstream } from '../helpers/tls-certs.js';

// `https:` upstreams with the proxy's TLS options (undici's `connect`
// options of each upstream's Pool), against real HTTPS servers whose
// certificates are made for the run.

const client = testClient();
const open = closeAfterEach();
let pki: TestPki;
/** Signed by the test CA for localhost and 127.0.0.1. */
let trusted: TlsUpstream;
/** Self-signed. */
let untrusted: TlsUpstream;
/** Asks for a client certificate signed by the test CA. */
let mutual: TlsUpstream;
/** Its certificate names `api.internal` only. */
let named: TlsUpstream;

beforeAll(async () => {
  pki = await makePki();
  trusted = await httpsUpstream('trusted', pki.server);
  untrusted = await httpsUpstream('untrusted', pki.untrusted);
  mutual = await httpsUpstream('mutual', { ...pki.server, ca: pki.ca, requestCert: true, rejectUnauthorized: true });
  named = await httpsUpstream('named', pki.named);
});
afterAll(async () => {
  await client.close();
  await Promise.all([trusted, untrusted, mutual, named].map((u) => u?.close()));
});

async function gateway(options: ProxyOptions) {
  const proxy = redundantProxy(options);
  const reports: RaceReport[] = [];
  proxy.on('race:end', (r) => reports.push(r));
  const gw = await mountGateway('node', proxy);
  open.push(gw, proxy);
  return { gw, reports };
}

describe('https: upstreams with TLS options', () => {
  it('trusts an upstream whose certificate chains to the given CA; without it the copy fails', async () => {
    const { gw } = await gateway({ upstreams: [{ id: 'a', url: trusted.url }], tls: { ca: pki.ca } });
    const res = await client.send(`${gw.url}/x`);
    expect(res.status).toBe(200);
    expect(res.json()).toMatchObject({ name: 'trusted' });

    // The same upstream without the CA: Node's built-in list does not know it.
    const { gw: bare, reports } = await gateway({ upstreams: [{ id: 'a', url: trusted.url }] });
    const failed = await client.send(`${bare.url}/x`);
    expect(failed.status).toBe(502);
    expect(failed.json()).toMatchObject({ code: 'RP_ERR_UPSTREAMS_FAILED' });
    const report = await eventually(() => reports[0]);
    expect(report.copies[0]).toMatchObject({ outcome: 'failed', error: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' });
  });

  it('an untrusted certificate fails its copy: the race adopts another, or answers 502 when every copy failed', async () => {
    const both = await gateway({ upstreams: [{ id: 'bad', url: untrusted.url }, { id: 'good', url: trusted.url }], tls: { ca: pki.ca } });
    const res = await client.send(`${both.gw.url}/`);
    expect(res.status).toBe(200);
    expect(res.headers['x-redundant-served-by']).toBe('good');
    const report = await eventually(() => both.reports[0]);
    expect(report.copies.find((c) => c.upstream === 'bad')).toMatchObject({ outcome: 'failed', error: 'DEPTH_ZERO_SELF_SIGNED_CERT' });

    const alone = await gateway({ upstreams: [{ id: 'bad', url: untrusted.url }], tls: { ca: pki.ca } });
    const failed = await client.send(`${alone.gw.url}/`);
    expect(failed.status).toBe(502);
    expect(failed.json()).toMatchObject({ code: 'RP_ERR_UPSTREAMS_FAILED' });
  });

  it('rejectUnauthorized: false passes an untrusted certificate; an upstream\'s own setting wins over the proxy\'s', async () => {
    const { gw } = await gateway({
      upstreams: [{ id: 'bad', url: untrusted.url, tls: { rejectUnauthorized: false } }],
      tls: { ca: pki.ca, rejectUnauthorized: true },
    });
    const res = await client.send(`${gw.url}/`);
    expect(res.status).toBe(200);
    expect(res.json()).toMatchObject({ name: 'untrusted' });
  });

  it('shows the client certificate to an upstream that requires one (mutual TLS)', async () => {
    const { gw } = await gateway({ upstreams: [{ id: 'm', url: mutual.url }], tls: { ca: pki.ca, ...pki.client } });
    const res = await client.send(`${gw.url}/`);
    expect(res.status).toBe(200);
    expect(res.json()).toMatchObject({ name: 'mutual', client: 'gateway' });

    // Without it the upstream ends the handshake.
    const { gw: anonymous, reports } = await gateway({ upstreams: [{ id: 'm', url: mutual.url }], tls: { ca: pki.ca } });
    const refused = await client.send(`${anonymous.url}/`);
    expect(refused.status).toBe(502);
    expect(refused.json()).toMatchObject({ code: 'RP_ERR_UPSTREAMS_FAILED' });
    const copy = (await eventually(() => reports[0])).copies[0]!;
    expect(copy.outcome).toBe('failed');
    // TLS 1.3: the upstream's refusal comes after the handshake, as a closed socket (docs/upstreams.md).
    expect(copy.error).toBe('UND_ERR_SOCKET');
  });

  it('servername: the name sent in SNI and checked against the certificate; a wrong one fails the copy', async () => {
    // Reached at 127.0.0.1, which its certificate does not name.
    const { gw } = await gateway({ upstreams: [{ id: 'n', url: named.url, tls: { servername: 'api.internal' } }], tls: { ca: pki.ca, servername: 'wrong.internal' } });
    const res = await client.send(`${gw.url}/`);
    expect(res.status).toBe(200);
    expect(res.json()).toMatchObject({ name: 'named', sni: 'api.internal' });

    for (const tls of [{ ca: pki.ca, servername: 'wrong.internal' }, { ca: pki.ca }]) {
      const { gw: wrong, reports } = await gateway({ upstreams: [{ id: 'n', url: named.url }], tls });
      const failed = await client.send(`${wrong.url}/`);
      expect(failed.status).toBe(502);
      expect(failed.json()).toMatchObject({ code: 'RP_ERR_UPSTREAMS_FAILED' });
      expect((await eventually(() => reports[0])).copies[0]).toMatchObject({ outcome: 'failed', error: 'ERR_TLS_CERT_ALTNAME_INVALID' });
    }
  });

  it('http: upstreams next to https: ones are not touched by the proxy\'s tls', async () => {
    const { gw } = await gateway({ upstreams: [{ id: 'plain', url: 'http://127.0.0.1:1' }, { id: 'a', url: trusted.url }], tls: { ca: pki.ca } });
    const res = await client.send(`${gw.url}/`);
    expect(res.status).toBe(200);
    expect(res.headers['x-redundant-served-by']).toBe('a');
  });
});

describe('TLS and HTTP/2 options are checked at construction', () => {
  function refusal(options: unknown): InvalidOptionError {
    try {
      const p = redundantProxy(options as ProxyOptions);
      void p.close();
    } catch (err) {
      expect(isRedundantProxyError(err)).toBe(true);
      expect((err as InvalidOptionError).code).toBe('RP_ERR_INVALID_OPTION');
      return err as InvalidOptionError;
    }
    throw new Error('expected the options to be refused');
  }
  const S = 'https://127.0.0.1:1';
  const P = 'http://127.0.0.1:2';

  it.each([
    [{ upstreams: [S], tls: 5 }, 'tls'],
    [{ upstreams: [S], tls: [] }, 'tls'],
    [{ upstreams: [P], tls: {} }, 'tls'],
    [{ upstreams: [{ id: 'a', url: P, tls: {} }] }, 'upstreams[0].tls'],
    [{ upstreams: [{ id: 'a', url: S, tls: 'x' }] }, 'upstreams[0].tls'],
    [{ upstreams: [S], tls: { ca: 5 } }, 'tls.ca'],
    [{ upstreams: [S], tls: { ca: [] } }, 'tls.ca'],
    [{ upstreams: [S], tls: { ca: 'not a certificate' } }, 'tls.ca'],
    [{ upstreams: [S], tls: { rejectUnauthorized: 'no' } }, 'tls.rejectUnauthorized'],
    [{ upstreams: [S], tls: { servername: '127.0.0.1' } }, 'tls.servername'],
    [{ upstreams: [S], tls: { servername: 'has space' } }, 'tls.servername'],
    [{ upstreams: [S], tls: { sni: 'a' } }, 'tls.sni'],
    [{ upstreams: [S], http2: 'yes' }, 'http2'],
    [{ upstreams: [P], http2: true }, 'http2'],
    [{ upstreams: [{ id: 'a', url: P, http2: true }, S] }, 'upstreams[0].http2'],
    [{ upstreams: [{ id: 'a', url: S, http2: 1 }] }, 'upstreams[0].http2'],
  ])('%j is refused, naming %s', (options, name) => {
    expect(refusal(options).option).toBe(name);
  });

  it('a client certificate needs its key and the key must match; no key or certificate is ever shown', () => {
    const body = (pem: string) => pem.split('\n')[1]!;
    const cases: Array<[unknown, string, string]> = [
      [{ upstreams: [S], tls: { cert: pki.client.cert } }, 'tls.cert', 'needs `key`'],
      [{ upstreams: [S], tls: { key: pki.client.key } }, 'tls.key', 'needs `cert`'],
      [{ upstreams: [S], tls: { cert: 'not a certificate', key: pki.client.key } }, 'tls.cert', 'PEM certificate'],
      [{ upstreams: [S], tls: { cert: pki.client.cert, key: 'not a key' } }, 'tls.key', 'private key'],
      // The certificate from the proxy, a key of another certificate from the upstream: named where it was given.
      [{ upstreams: [{ id: 'a', url: S, tls: { key: pki.server.key } }], tls: { cert: pki.client.cert } }, 'upstreams[0].tls.key', 'does not match'],
      [{ upstreams: [S], tls: { privateKey: pki.client.key } }, 'tls.privateKey', 'is not a TLS option'],
    ];
    for (const [options, name, says] of cases) {
      const err = refusal(options);
      expect(err.option).toBe(name);
      expect(err.message).toContain(says);
      for (const pem of [pki.client.key, pki.server.key, pki.client.cert]) expect(err.message).not.toContain(body(pem));
      expect(err.message).not.toContain('PRIVATE KEY');
    }
  });

  it('accepts a CA bundle as an array, a client certificate with its key, and http2 on https: upstreams only', () => {
    const p = redundantProxy({
      upstreams: [{ id: 'a', url: S, http2: false }, { id: 'p', url: P }, { id: 'b', url: 'https://127.0.0.1:3/api', tls: { servername: 'b.internal' } }],
      tls: { ca: [pki.ca, Buffer.from(pki.ca)], ...pki.client, rejectUnauthorized: true },
      http2: true,
    });
    void p.close();
  });
});
