import type { ServerResponse } from 'node:http';
import type { RedundantProxyError } from '../errors.js';

/** Answers with the error's status and a JSON body carrying its stable `code`. */
export function sendError(res: ServerResponse, err: RedundantProxyError, requestId: string | null, extraHeaders?: Record<string, string>): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const body = JSON.stringify(requestId ? { ...err.toJSON(), requestId } : err.toJSON());
  const headers: Record<string, string> = {
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(body)),
    'cache-control': 'no-store',
    ...extraHeaders,
  };
  if (requestId) headers['x-request-id'] = requestId;
  res.writeHead(err.status, headers);
  res.end(body);
}
