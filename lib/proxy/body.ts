import type { IncomingMessage } from 'node:http';
import { codes, RedundantProxyError } from '../errors.js';

/**
 * Where a body parser that ran before the proxy may have left the raw bytes:
 * koa-bodyparser sets `ctx.request.rawBody`, express.raw() leaves a Buffer in
 * `req.body`, and the common `verify` recipe stores `req.rawBody`.
 */
export interface ParsedBodyHints {
  rawBody?: unknown;
  body?: unknown;
}

function hasBody(req: IncomingMessage): boolean {
  const te = req.headers['transfer-encoding'];
  const cl = req.headers['content-length'];
  return te !== undefined || (cl !== undefined && cl !== '0');
}

function asBuffer(value: unknown): Buffer | undefined {
  if (Buffer.isBuffer(value)) return value;
  if (typeof value === 'string') return Buffer.from(value);
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  return undefined;
}

const tooLarge = (max: number) =>
  new RedundantProxyError(codes.BODY_TOO_LARGE, `request body exceeds maxBodySize (${max} bytes)`, { status: 413 });

/**
 * Reads the whole request body, at most `max` bytes, so it can be copied.
 * Resolves `null` when the request has no body. Rejects with a
 * `RedundantProxyError` (413, 400 or 500) otherwise; never buffers past `max`.
 */
export function readBody(req: IncomingMessage, max: number, hints: ParsedBodyHints): Promise<Buffer | null> {
  const declared = req.headers['content-length'];
  if (declared !== undefined) {
    const n = Number(declared);
    if (!/^\d+$/.test(declared)) {
      return Promise.reject(new RedundantProxyError(codes.BODY_READ, 'malformed Content-Length', { status: 400 }));
    }
    // claim: refuse before a byte is read or a copy leaves.
    if (n > max) return Promise.reject(tooLarge(max));
  }
  // A body parser already read the stream.
  if (req.readableEnded || (req as { _body?: boolean })._body === true) {
    const raw = asBuffer(hints.rawBody) ?? asBuffer(hints.body);
    if (raw) return raw.length > max ? Promise.reject(tooLarge(max)) : Promise.resolve(raw.length ? raw : null);
    if (!hasBody(req)) return Promise.resolve(null);
    return Promise.reject(
      new RedundantProxyError(
        codes.BODY_CONSUMED,
        'the request body was consumed by a body parser before the proxy and no raw body was kept; mount the proxy before the parser or keep the raw body (req.rawBody)',
        { status: 500 },
      ),
    );
  }
  if (!hasBody(req)) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const cleanup = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > max) {
        cleanup();
        req.pause();
        reject(tooLarge(max));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      resolve(size === 0 ? null : chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    };
    const onError = (err: Error) => {
      cleanup();
      reject(new RedundantProxyError(codes.BODY_READ, 'the request body could not be read', { status: 400, cause: err }));
    };
    const onClose = () => {
      if (req.readableEnded) return;
      onError(new Error('the client closed the connection while sending the body'));
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('close', onClose);
  });
}
