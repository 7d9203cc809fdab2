import type { SessionStore } from '../../lib/index.js';
import { sleep } from './upstream.js';

/**
 * The same store, with some of its methods taking effect `ms` later, as a store
 * across the network does. A test that relies on an ordering ("the adoption
 * is recorded before the answer goes out") fails with it when the ordering is
 * not enforced, where an in-memory store answering within a microtask would
 * hide it.
 */
export function slowStore(store: SessionStore, delays: Partial<Record<keyof SessionStore, number>>): SessionStore {
  return new Proxy(store, {
    get(target, name, receiver) {
      const value = Reflect.get(target, name, receiver) as unknown;
      if (typeof value !== 'function') return value;
      const ms = delays[name as keyof SessionStore];
      const bound = (value as (...args: unknown[]) => unknown).bind(target);
      if (!ms) return bound;
      // The command travels first: its effect lands `ms` later.
      return async (...args: unknown[]) => {
        await sleep(ms);
        return bound(...args);
      };
    },
  });
}
