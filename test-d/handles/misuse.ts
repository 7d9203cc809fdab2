// Each line under `@ts-expect-error` must be a type error: were the handle
// `any` (or missing), the directive itself would fail the compile. The test
// also compiles this file without the directives and checks that each of
// these lines, and only they, fail.
import express from 'express';
import Koa from 'koa';

const app = express();
app.use(async (req, res) => {
  // @ts-expect-error the commit function is required
  await req.redundant.commitOnce();
  // @ts-expect-error the fence is a number, not a string
  await req.redundant.commitOnce((fence: string) => fence);
  // @ts-expect-error no such field on the handle
  res.json(req.redundant.sessionId);
});

const koa = new Koa();
koa.use(async (ctx) => {
  // @ts-expect-error the session is { id, data }, not a number
  const n: number = ctx.state.redundant.session;
  // @ts-expect-error claim() resolves to a Claim, whose fence is a number
  const f: string = (await ctx.state.redundant.claim()).fence;
  ctx.body = { n, f };
});
