import https from 'node:https';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { generate } from 'selfsigned';

// Certificates made for a test run (EC keys: fast to generate): a private CA,
// server certificates it signed, a client certificate it signed for mutual
// TLS, and a self-signed server certificate that no CA vouches for.

export interface KeyPair {
  cert: string;
  key: string;
}

export interface TestPki {
  /** The CA's certificate, to trust. */
  ca: string;
  /** Signed by the CA, for `localhost` and 127.0.0.1. */
  server: KeyPair;
  /** Signed by the CA, for the name `api.internal` only (not the address it is reached at). */
  named: KeyPair;
  /** Signed by the CA, for client authentication; common name `gateway`. */
  client: KeyPair;
  /** Self-signed, for 127.0.0.1: trusted by nobody. */
  untrusted: KeyPair;
}

const EC = { keyType: 'ec', algorithm: 'sha256' } as const;

async function signed(ca: KeyPair, cn: string, altNames: Array<{ type: 2; value: string } | { type: 7; ip: string }>, usage: { serverAuth?: boolean; clientAuth?: boolean }): Promise<KeyPair> {
  const pems = await generate([{ name: 'commonName', value: cn }], {
    ...EC,
    ca: { key: ca.key, cert: ca.cert },
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', ...usage },
      { name: 'subjectAltName', altNames },
    ],
  });
  return { cert: pems.cert, key: pems.private };
}

export async function makePki(): Promise<TestPki> {
  const caPems = await generate([{ name: 'commonName', value: 'redundant-proxy test CA' }], {
    ...EC,
    extensions: [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
    ],
  });
  const ca = { cert: caPems.cert, key: caPems.private };
  const untrustedPems = await generate([{ name: 'commonName', value: '127.0.0.1' }], {
    ...EC,
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }] }],
  });
  return {
    ca: ca.cert,
    server: await signed(ca, 'localhost', [{ type: 2, value: 'localhost' }, { type: 7, ip: '127.0.0.1' }], { serverAuth: true }),
    named: await signed(ca, 'api.internal', [{ type: 2, value: 'api.internal' }], { serverAuth: true }),
    client: await signed(ca, 'gateway', [{ type: 2, value: 'gateway' }], { clientAuth: true }),
    untrusted: { cert: untrustedPems.cert, key: untrustedPems.private },
  };
}

export interface TlsUpstream {
  url: string;
  /** TLS connections the server accepted (handshakes completed). */
  connections(): number;
  close(): Promise<void>;
}

/** An HTTPS upstream on 127.0.0.1, port 0, that answers JSON: `name`, the SNI it was sent, and the client certificate's CN. */
export async function httpsUpstream(name: string, options: https.ServerOptions): Promise<TlsUpstream> {
  let accepted = 0;
  const server = https.createServer(options, (req, res) => {
    const socket = req.socket as TLSSocket;
    const peer = socket.getPeerCertificate();
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ name, sni: socket.servername || null, client: peer && peer.subject ? peer.subject.CN : null }));
  });
  server.on('secureConnection', () => accepted++);
  // A handshake the client gives up on is not an error of the test.
  server.on('tlsClientError', () => {});
  server.keepAliveTimeout = 2000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    connections: () => accepted,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** What an HTTP/2 upstream saw of one stream. */
export interface H2Stream {
  path: string;
  /** Resolves with the stream's RST_STREAM code when it was reset before its answer ended, or null. */
  reset: Promise<number | null>;
}

export interface H2Upstream extends TlsUpstream {
  streams: H2Stream[];
}

/**
 * An HTTP/2-only upstream (`allowHTTP1: false`) on 127.0.0.1, port 0: each
 * stream is answered by `answer` (JSON `{ name }` after `delay(path)` ms;
 * `Infinity` never answers).
 */
export async function h2Upstream(name: string, pair: KeyPair, delay: (path: string) => number): Promise<H2Upstream> {
  let accepted = 0;
  const streams: H2Stream[] = [];
  const server = http2.createSecureServer({ ...pair, allowHTTP1: false });
  server.on('secureConnection', () => accepted++);
  server.on('tlsClientError', () => {});
  server.on('stream', (stream, headers) => {
    const path = String(headers[':path']);
    let answered = false;
    streams.push({
      path,
      reset: new Promise((resolve) => stream.on('close', () => resolve(answered ? null : stream.rstCode))),
    });
    stream.on('error', () => {});
    const ms = delay(path);
    if (!Number.isFinite(ms)) return;
    const timer = setTimeout(() => {
      if (stream.destroyed || stream.closed) return;
      answered = true;
      stream.respond({ ':status': 200, 'content-type': 'application/json' });
      stream.end(JSON.stringify({ name }));
    }, ms);
    stream.on('close', () => clearTimeout(timer));
  });
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    connections: () => accepted,
    streams,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sessions) s.destroy();
        server.close(() => resolve());
      }),
  };
}
