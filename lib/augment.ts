// Types only (nothing of it runs): importing `redundant-proxy` types the
// worker's per-request handle where the frameworks keep it, so a handler
// writes `req.redundant.commitOnce(…)` (Express) or
// `ctx.state.redundant.session` (Koa) without a cast or a `declare global`
// of its own.
//
// Express's `Request` extends the global `Express.Request`, the hook its
// types leave for this; Koa's `ctx.state` is `DefaultState` of module `koa`.
// The Koa half names a module that an Express-only project may not have
// installed: TypeScript does not report that in a declaration file of a
// dependency (skipLibCheck or not), so such a project compiles as before.
import type {} from 'koa';
import type { RedundantHandle } from './index.js';

declare global {
  // The only way to extend Express's request type, which is a global namespace.
  // eslint-disable-next-line @typescript-eslint/no-namespace
  namespace Express {
    interface Request {
      /**
       * The copy's handle, set by `redundantWorker()` for every request that
       * passed through it (mount the worker before your routes); absent on
       * routes mounted before it.
       */
      redundant: RedundantHandle;
    }
  }
}

declare module 'koa' {
  interface DefaultState {
    /** The copy's handle, set by `redundantWorker()` for every request that passed through it (mount the worker first). */
    redundant: RedundantHandle;
  }
}
