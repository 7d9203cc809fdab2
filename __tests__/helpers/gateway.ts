import http from 'node:http';
import Koa from 'koa';
import express from 'express';
import type { RedundantProxy } from '../../lib/index.js';
import { listen } from './upstream.js';

export type Framework = 'koa' | 'express' | 'node';
export const frameworks: Framework[] = ['koa', 'express', 'node'];

export interface Gateway {
  url: string;
  server: http.Server;
  close(): Promise<void>;
}

/** Mounts the proxy in a real gateway of the given kind on 127.0.0.1:0. */
export async function mountGateway(kind: Framework, proxy: RedundantProxy): Promise<Gateway> {
  let listener: http.RequestListener;
  if (kind === 'koa') {
    const app = new Koa();
    app.use(proxy);
    listener = app.callback();
  } else if (kind === 'express') {
    const app = express();
    app.use(proxy);
    listener = app;
  } else {
    listener = proxy.handler;
  }
  return listen(listener);
}
