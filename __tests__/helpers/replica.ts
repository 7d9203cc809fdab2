import http from 'node:http';
import Koa from 'koa';
import express from 'express';
import { listen } from './upstream.js';
import { redundantWorker, type RedundantHandle, type RedundantWorker, type SessionStore } from '../../lib/index.js';

export interface Answer {
  status?: number;
  body: unknown;
}
export type ReplicaHandler = (handle: RedundantHandle, req: http.IncomingMessage) => Promise<Answer> | Answer;

export interface Replica {
  id: string;
  url: string;
  worker: RedundantWorker;
  server: http.Server;
  close(): Promise<void>;
}

/** An application server (Koa or Express) running redundantWorker, on 127.0.0.1:0. */
export async function startReplica(
  kind: 'koa' | 'express',
  options: { id: string; store: SessionStore; secret?: string; storeTimeout?: number; lease?: number },
  handler: ReplicaHandler,
): Promise<Replica> {
  const worker = redundantWorker(options);
  let listener: http.RequestListener;
  if (kind === 'koa') {
    const app = new Koa();
    app.silent = true;
    app.use(worker);
    app.use(async (ctx) => {
      const answer = await handler(ctx.state.redundant as RedundantHandle, ctx.req);
      ctx.status = answer.status ?? 200;
      ctx.body = answer.body;
    });
    listener = app.callback();
  } else {
    const app = express();
    app.use(worker);
    app.use(async (req, res) => {
      const answer = await handler((req as unknown as { redundant: RedundantHandle }).redundant, req);
      if (!res.destroyed) res.status(answer.status ?? 200).json(answer.body);
    });
    app.use(worker.errorHandler);
    listener = app;
  }
  const server = await listen(listener);
  return { id: options.id, url: server.url, worker, server: server.server, close: server.close };
}

/** Resolves once `check` returns a truthy value, polling every 5 ms for at most `ms`. */
export async function eventually<T>(check: () => T | Promise<T>, ms = 2000): Promise<NonNullable<T>> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}
