import type { IncomingMessage } from 'node:http';
import { codes, RedundantProxyError } from '../errors.js';
import { otherCoding } from './headers.js';

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

function bytesOf(value: unknown): Buffer | undefined {
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  return undefined;
}

/** Node's name for a `charset`, for the ones whose text encodes back to the bytes it was decoded from. */
const CHARSETS: Record<string, BufferEncoding> = { 'utf-8': 'utf8', utf8: 'utf8', 'us-ascii': 'latin1', ascii: 'latin1', 'iso-8859-1': 'latin1', latin1: 'latin1', 'utf-16le': 'utf16le' };

/** `content-encoding` other than identity: a parser that kept the body kept it decoded. */
function contentCoded(req: IncomingMessage): boolean {
  const ce = req.headers['content-encoding'];
  return ce !== undefined && ce.trim().toLowerCase() !== 'identity' && ce.trim() !== '';
}

const consumed = (why: string) => new RedundantProxyError(codes.BODY_CONSUMED, `the request body was read by a body parser before the proxy, and ${why}; mount the proxy before the parser, or keep the raw bytes (req.rawBody as a Buffer, the \`verify\` recipe)`, { status: 500 });

/**
 * The bytes a body parser kept, as the copies are to carry them, or why they
 * cannot be trusted to be the client's. A Buffer is taken as it is (the
 * \`verify\` recipe, express.raw()). Text (koa-bodyparser's rawBody,
 * express.text()) is encoded back in its \`charset\` and must come to the
 * length the client declared: a decoding that lost bytes (invalid UTF-8, a
 * charset decoded as another) is refused, never forwarded changed. A string
 * in \`req.body\` of a JSON request is a parsed value, not the body.
 */
function keptBody(req: IncomingMessage, hints: ParsedBodyHints): Buffer | RedundantProxyError | undefined {
  const raw = bytesOf(hints.rawBody) ?? bytesOf(hints.body);
  if (raw) return raw;
  const text = typeof hints.rawBody === 'string' ? hints.rawBody : typeof hints.body === 'string' && !isJson(req) ? hints.body : undefined;
  if (text === undefined) return undefined;
  const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(req.headers['content-type'] ?? '')?.[1]?.toLowerCase() ?? 'utf-8';
  const encoding = CHARSETS[charset];
  if (encoding === undefined) return consumed(`kept it as text decoded from charset ${charset}, which the proxy cannot encode back to the bytes received`);
  const bytes = Buffer.from(text, encoding);
  if (bytes.toString(encoding) !== text) return consumed(`the text it kept holds characters that charset ${charset} cannot encode (it was not decoded from the bytes received as ${charset})`);
  const declared = req.headers['content-length'];
  // A compressed body's declared length is of the compressed bytes.
  if (declared !== undefined && !contentCoded(req)) {
    if (Number(declared) !== bytes.length) return consumed(`the text it kept encodes back to ${bytes.length} bytes, not the ${declared} received (its decoding lost or changed bytes)`);
  } else if (text.includes('\uFFFD')) {
    // No length to check it by: a replacement character is what a lossy decoding leaves.
    return consumed('the text it kept holds U+FFFD, which a decoding that lost bytes leaves, and no Content-Length to check it by');
  }
  return bytes;
}

function isJson(req: IncomingMessage): boolean {
  const type = (req.headers['content-type'] ?? '').split(';', 1)[0]!.trim().toLowerCase();
  return type === 'application/json' || type.endsWith('+json');
}

/**
 * A body parser before the proxy decompressed the body it kept (body-parser
 * and koa-bodyparser inflate gzip, deflate and br): the copies carry those
 * bytes, so they go without the client's \`content-encoding\`. Bytes kept
 * as they were sent (raw-body, for a webhook's signature) keep it: bytes as
 * long as the \`Content-Length\` received, or starting as gzip or zlib
 * (deflate) data starts.
 */
export function decodedByParser(req: IncomingMessage, body: Buffer | null): boolean {
  if (body === null || !contentCoded(req) || !(req.readableEnded || (req as { _body?: boolean })._body === true)) return false;
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) === body.length) return false;
  const coding = (req.headers['content-encoding'] ?? '').trim().toLowerCase();
  if ((coding === 'gzip' || coding === 'x-gzip') && body.length >= 2 && body[0] === 0x1f && body[1] === 0x8b) return false;
  if (coding === 'deflate' && body.length >= 2 && (body[0]! & 0x0f) === 8 && ((body[0]! << 8) | body[1]!) % 31 === 0) return false;
  return true;
}

const tooLarge = (max: number) =>
  new RedundantProxyError(codes.BODY_TOO_LARGE, `request body exceeds maxBodySize (${max} bytes)`, { status: 413 });

/**
 * The bytes of all request bodies buffered at once (they are held until their
 * race ends, to be copied): each request takes its share as it reads, and
 * gives it back when it is done. A slow or large upload cannot make the
 * gateway hold more than `max` bytes of bodies, however many there are.
 */
export class BodyBudget {
  #used = 0;
  constructor(readonly max: number) {}

  get used(): number {
    return this.#used;
  }

  /** A share for one request; `release()` it when the request is done. */
  share(): BodyShare {
    let held = 0;
    return {
      take: (n: number) => {
        if (this.#used + n > this.max) return false;
        this.#used += n;
        held += n;
        return true;
      },
      release: () => {
        this.#used -= held;
        held = 0;
      },
    };
  }
}

export interface BodyShare {
  /** Takes `n` more bytes of the budget; false (and nothing taken) when they do not fit. */
  take(n: number): boolean;
  release(): void;
}

export interface BodyLimits {
  share: BodyShare;
  /** Milliseconds the whole body may take to arrive. */
  totalMs: number;
  /** Milliseconds without a byte of it. */
  idleMs: number;
}

const overloaded = () =>
  new RedundantProxyError(codes.OVERLOADED, 'the gateway is buffering as many request bodies as it may (maxBufferedBytes); retry later', { status: 503 });

/**
 * Reads the whole request body, at most `max` bytes, so it can be copied.
 * Resolves `null` when the request has no body. Rejects with a
 * `RedundantProxyError` (413, 400, 501 or 500) otherwise; never buffers past `max`.
 */
export function readBody(req: IncomingMessage, max: number, hints: ParsedBodyHints, limits?: BodyLimits): Promise<Buffer | null> {
  const coding = otherCoding(req.headers['transfer-encoding']);
  if (coding !== undefined) {
    // Node took the chunked framing off and left the rest coded: sent on as plain bytes, it would be another body.
    return Promise.reject(new RedundantProxyError(codes.TRANSFER_CODING, `the request body's transfer coding ${JSON.stringify(coding)} is not supported (only chunked); send it with Content-Encoding instead`, { status: 501 }));
  }
  const declared = req.headers['content-length'];
  let reserved = 0;
  if (declared !== undefined) {
    const n = Number(declared);
    if (!/^\d+$/.test(declared)) {
      return Promise.reject(new RedundantProxyError(codes.BODY_READ, 'malformed Content-Length', { status: 400 }));
    }
    // claim: refuse before a byte is read or a copy leaves.
    if (n > max) return Promise.reject(tooLarge(max));
    // The declared length is taken from the budget at once: a client that
    // declares much and sends little holds what it declared.
    if (limits && n > 0 && !req.readableEnded) {
      if (!limits.share.take(n)) return Promise.reject(overloaded());
      reserved = n;
    }
  }
  // A body parser already read the stream.
  if (req.readableEnded || (req as { _body?: boolean })._body === true) {
    const raw = keptBody(req, hints);
    if (raw instanceof RedundantProxyError) return Promise.reject(raw);
    if (raw) return raw.length > max ? Promise.reject(tooLarge(max)) : Promise.resolve(raw.length ? raw : null);
    if (!hasBody(req)) return Promise.resolve(null);
    return Promise.reject(consumed('no raw body was kept'));
  }
  if (!hasBody(req)) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let idle: NodeJS.Timeout | undefined;
    let total: NodeJS.Timeout | undefined;
    const cleanup = () => {
      clearTimeout(idle);
      clearTimeout(total);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
    };
    const fail = (err: RedundantProxyError) => {
      cleanup();
      req.pause();
      reject(err);
    };
    const slow = (what: string) => () =>
      fail(new RedundantProxyError(codes.BODY_TIMEOUT, `the request body ${what}`, { status: 408 }));
    if (limits) {
      total = setTimeout(slow(`did not arrive within bodyTimeout (${limits.totalMs} ms)`), limits.totalMs);
      idle = setTimeout(slow(`stalled for bodyIdleTimeout (${limits.idleMs} ms)`), limits.idleMs);
    }
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > max) {
        fail(tooLarge(max));
        return;
      }
      // Bytes past what was declared (or a chunked body) take their share as they come.
      if (limits && size > reserved) {
        if (!limits.share.take(size - reserved)) {
          fail(overloaded());
          return;
        }
        reserved = size;
      }
      if (idle) idle.refresh();
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
