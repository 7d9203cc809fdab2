// Must compile: a Koa replica uses the worker's handle through `ctx.state`,
// typed (not `any`).
import Koa from 'koa';
import { redundantWorker, type RedundantHandle } from 'redundant-proxy';
import { RedisSessionStore } from 'redundant-proxy/redis';
import { Redis } from 'ioredis';

const store = new RedisSessionStore({ client: new Redis({ lazyConnect: true }) });
const app = new Koa();
app.use(redundantWorker({ id: 'b', store }));
app.use(async (ctx) => {
  const h: RedundantHandle = ctx.state.redundant;
  const session: { id: string; data: Record<string, unknown> } = ctx.state.redundant.session;
  const cart = Array.isArray(session.data.cart) ? (session.data.cart as string[]) : [];
  ctx.state.redundant.session.data.cart = [...cart, 'apple'];
  const fence = await ctx.state.redundant.commitOnce((fence: number) => fence);
  const update: boolean = ctx.state.redundant.update;
  ctx.body = { fence, update, upstream: h.upstreamId, direct: ctx.state.redundant.direct };
});
