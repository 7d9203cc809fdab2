import http from 'node:http';
import Koa from 'koa';
import express from 'express';
import { redundantProxy, type ProxyErrorEvent, type ProxyOptions, type RaceReport, type RedundantProxy } from '../../lib/index.js';
import type { Closable } from './cleanup.js';
import { listen, startUpstream, type Behaviour, type TestUpstream } from './upstream.js';

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

/**
 * Real upstreams (one per behaviour, ids u0, u1, …) behind a proxy mounted in
 * a gateway of the given kind, with its race reports and error events; all
 * of it handed to `open` to be closed after the test.
 */
export async function raceFixture(open: { push(...items: Closable[]): void }, kind: Framework, behaviours: Behaviour[], options: Partial<ProxyOptions> = {}) {
  const ups: TestUpstream[] = [];
  for (const b of behaviours) {
    const u = await startUpstream(b);
    ups.push(u);
    open.push(u);
  }
  const proxy = redundantProxy({ upstreams: ups.map((u, i) => ({ id: `u${i}`, url: u.url })), ...options });
  const gw = await mountGateway(kind, proxy);
  open.push(gw, proxy);
  const reports: RaceReport[] = [];
  const errors: ProxyErrorEvent[] = [];
  proxy.on('race:end', (r) => reports.push(r));
  proxy.on('error', (e) => errors.push(e));
  return { ups, proxy, gw, reports, errors };
}
