import type { ServerResponse } from 'node:http';

// Every error answer of this library, the proxy's and the worker's, is JSON
// with a stable `code`, written here.

/** An error's answer: status, JSON body and the headers that go with it. */
export interface JsonAnswer {
  status: number;
  body: { code: string; message: string } & Record<string, unknown>;
  headers?: Record<string, string>;
}

/**
 * Writes a JSON answer with its `content-type` and `content-length`. A
 * response whose head already left (or that is destroyed) cannot carry it:
 * it is destroyed instead, so the client sees a broken answer, never a
 * wrong one.
 */
export function writeJsonAnswer(res: ServerResponse, answer: JsonAnswer): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const body = JSON.stringify(answer.body);
  res.writeHead(answer.status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(body)),
    ...answer.headers,
  });
  res.end(body);
}
