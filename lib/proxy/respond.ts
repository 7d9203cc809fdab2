import { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import type { RedundantProxyError } from '../errors.js';
import { writeJsonAnswer } from '../json-error.js';
import { CLIENT_HEADERS } from '../wire/protocol.js';

/** Answers with the error's status and a JSON body carrying its stable `code`. */
export function sendError(res: ServerResponse, err: RedundantProxyError, requestId: string | null, extraHeaders?: Record<string, string>): void {
  const headers: Record<string, string> = { 'cache-control': 'no-store', ...extraHeaders };
  if (requestId) headers[CLIENT_HEADERS.requestId] = requestId;
  // A gateway served over HTTP/2 (node:http2's compatibility API) closes the stream, not the connection.
  if ((res as { stream?: unknown }).stream !== undefined) delete headers.connection;
  writeJsonAnswer(res, { status: err.status, body: requestId ? { ...err.toJSON(), requestId } : err.toJSON(), headers });
}

/**
 * A response with nobody at the other end: what a race writes to once its
 * client has left but the race goes on (to keep an update's answer for the
 * client's retry). Everything written is dropped; it never fails.
 */
export function detachedResponse(): ServerResponse {
  const res = new EventEmitter() as EventEmitter & Record<string, unknown>;
  Object.assign(res, {
    headersSent: false,
    destroyed: false,
    writableEnded: false,
    statusCode: 200,
    writeHead(status: number) {
      res.headersSent = true;
      res.statusCode = status;
      return res;
    },
    setHeader() {
      return res;
    },
    write() {
      res.headersSent = true;
      return true;
    },
    end() {
      res.headersSent = true;
      res.writableEnded = true;
      return res;
    },
    destroy() {
      res.destroyed = true;
      return res;
    },
  });
  return res as unknown as ServerResponse;
}
