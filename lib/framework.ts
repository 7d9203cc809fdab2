import type { IncomingMessage, ServerResponse } from 'node:http';

// Both middleware factories are one function that Koa calls as (ctx, next)
// and Express (or Connect, or a node:http server) as (req, res, next). They
// tell the two apart here, in one way: the second argument of Express is a
// ServerResponse, Koa's is its `next` function.

/** The smallest Koa context both middleware need: the node request and response under it. */
export interface KoaContextLike {
  req: IncomingMessage;
  res: ServerResponse;
}

/** How a middleware was called. */
export type MiddlewareCall<Ctx extends KoaContextLike> =
  | { kind: 'node'; req: IncomingMessage; res: ServerResponse; next: ((err?: unknown) => void) | undefined }
  | { kind: 'koa'; ctx: Ctx; next: () => Promise<unknown> };

/** True for a node:http response (what Express passes second). */
export function isServerResponse(value: unknown): value is ServerResponse {
  return value !== null && typeof value === 'object' && typeof (value as ServerResponse).writeHead === 'function';
}

/**
 * Which framework called the middleware. Throws a `TypeError` for a call
 * that is neither; `also` names any other way in (`, or use .handler(req, res)`).
 */
export function detectFramework<Ctx extends KoaContextLike>(a: unknown, b: unknown, c: unknown, also = ''): MiddlewareCall<Ctx> {
  if (isServerResponse(b)) return { kind: 'node', req: a as IncomingMessage, res: b, next: typeof c === 'function' ? (c as (err?: unknown) => void) : undefined };
  const ctx = a as Ctx | null;
  if (!ctx || typeof ctx !== 'object' || !ctx.req || !ctx.res) {
    throw new TypeError(`redundant-proxy: call the middleware as Koa (ctx, next), Express (req, res, next)${also}`);
  }
  return { kind: 'koa', ctx, next: b as () => Promise<unknown> };
}
