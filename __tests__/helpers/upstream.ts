import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import net, { type AddressInfo } from 'node:net';

export interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** Resolves true when the proxy stopped this request before its answer was complete. */
  stopped: Promise<boolean>;
}

export type Behaviour = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void | Promise<void>;

export interface TestUpstream {
  url: string;
  port: number;
  seen: Seen[];
  server: http.Server;
  close(): Promise<void>;
}

/** A real upstream HTTP server on 127.0.0.1, port 0, recording what it receives. */
export async function startUpstream(behaviour: Behaviour): Promise<TestUpstream> {
  const seen: Seen[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    let resolveStopped!: (v: boolean) => void;
    const stopped = new Promise<boolean>((r) => (resolveStopped = r));
    res.on('close', () => resolveStopped(!res.writableFinished));
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body, stopped });
      Promise.resolve(behaviour(req, res, body)).catch((err) => {
        res.destroy(err);
      });
    });
  });
  server.keepAliveTimeout = 1000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    seen,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Answers `status` with a JSON body after `ms`, unless the request is stopped first. */
export function after(ms: number, status = 200, body: unknown = { ok: true }, headers: Record<string, string> = {}): Behaviour {
  return (_req, res) =>
    new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        if (res.destroyed) return resolve();
        const text = JSON.stringify(body);
        res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)), ...headers });
        res.end(text);
        resolve();
      }, ms);
      res.on('close', () => {
        clearTimeout(t);
        resolve();
      });
    });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Starts an HTTP server for a request listener on 127.0.0.1:0. */
export async function listen(listener: http.RequestListener): Promise<{ url: string; server: http.Server; close(): Promise<void> }> {
  const server = http.createServer(listener);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A port nothing listens on (on `host`): bound, then released. */
export async function deadPort(host = '127.0.0.1'): Promise<number> {
  const s = http.createServer();
  await new Promise<void>((r) => s.listen(0, host, r));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** Raw HTTP/1.1 request over a socket, for headers fetch() would refuse to send. */
export function rawRequest(url: string, head: string, body: Buffer | string = ''): Promise<{ status: number; headers: Record<string, string>; body: string; raw: string }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    import('node:net').then(({ connect }) => {
      const sock = connect(Number(port), hostname, () => {
        sock.write(head);
        if (body.length) sock.write(body);
      });
      const chunks: Buffer[] = [];
      sock.on('data', (c) => chunks.push(c));
      sock.on('error', reject);
      sock.on('close', () => {
        const raw = Buffer.concat(chunks).toString('latin1');
        const [headText = '', ...rest] = raw.split('\r\n\r\n');
        const lines = headText.split('\r\n');
        const status = Number(lines[0]?.split(' ')[1]);
        const headers: Record<string, string> = {};
        for (const line of lines.slice(1)) {
          const i = line.indexOf(':');
          headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
        }
        resolve({ status, headers, body: rest.join('\r\n\r\n'), raw });
      });
    }, reject);
  });
}

/** A raw TCP upstream that answers every request with `reply` (bytes as they go on the wire). */
export async function rawUpstream(reply: string | Buffer): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    let buffered = '';
    socket.on('data', (chunk) => {
      buffered += chunk.toString('latin1');
      // One answer per request head (the bodies here are empty).
      while (buffered.includes('\r\n\r\n')) {
        buffered = buffered.slice(buffered.indexOf('\r\n\r\n') + 4);
        socket.write(reply);
      }
    });
    socket.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
