import type { Dispatcher } from 'undici';
import type { Emitter } from '../events.js';
import type { Scheduler } from '../time.js';
import { HealthChecker } from './health.js';
import type { ResolvedOptions } from './options.js';
import type { ProxyEvents } from './proxy-events.js';

/** The `healthCheck` option: a checker probing each upstream through its pool, its verdicts as events. */
export function startHealthChecks(opts: ResolvedOptions, dispatchers: Map<string, Dispatcher>, time: Scheduler, events: Emitter<ProxyEvents>): HealthChecker {
  const settings = opts.healthCheck as Exclude<ResolvedOptions['healthCheck'], false>;
  const byId = new Map(opts.upstreams.map((u) => [u.id, u]));
  const checker = new HealthChecker(
    opts.upstreams.map((u) => u.id),
    settings,
    async (id, path, signal) => {
      const { statusCode, body } = await dispatchers.get(id)!.request({ path: byId.get(id)!.prefix + path, method: 'GET', signal, headersTimeout: settings.timeout, bodyTimeout: settings.timeout });
      await body.dump();
      return statusCode;
    },
    (change) => {
      const { upstreamId: upstream, inARow, status, error } = change;
      events.emit(change.healthy ? 'upstream:healthy' : 'upstream:unhealthy', { upstream, inARow, status, error });
    },
    time,
  );
  checker.start();
  return checker;
}

