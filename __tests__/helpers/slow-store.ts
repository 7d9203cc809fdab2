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

export interface FaultyStore {
  store: SessionStore;
  /** Calls of these methods (all when none named) wait, in order, until `up()`: a Redis stopped by SIGSTOP. */
  freeze(...methods: Array<keyof SessionStore>): void;
  /** Calls of these methods (all when none named) reject at once until `up()`: a Redis that refuses connections. */
  down(...methods: Array<keyof SessionStore>): void;
  /** Runs the frozen calls in the order they came, and lets every call through again. */
  up(): void;
}

/** The same store, with faults switched on and off by the test. */
export function faultyStore(store: SessionStore): FaultyStore {
  let mode: 'up' | 'frozen' | 'down' = 'up';
  let affected: Set<string> | null = null;
  let queue: Array<() => void> = [];
  const hit = (name: string) => mode !== 'up' && (affected === null || affected.has(name));
  const wrapped = new Proxy(store, {
    get(target, name, receiver) {
      const value = Reflect.get(target, name, receiver) as unknown;
      if (typeof value !== 'function' || name === 'close') return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      const bound = (value as (...args: unknown[]) => Promise<unknown>).bind(target);
      return (...args: unknown[]) => {
        if (!hit(String(name))) return bound(...args);
        if (mode === 'down') return Promise.reject(new Error(`store down: ${String(name)} refused`));
        return new Promise((resolve, reject) => queue.push(() => bound(...args).then(resolve, reject)));
      };
    },
  });
  const set = (m: typeof mode, methods: Array<keyof SessionStore>) => {
    mode = m;
    affected = methods.length ? new Set(methods) : null;
  };
  return {
    store: wrapped,
    freeze: (...methods) => set('frozen', methods),
    down: (...methods) => set('down', methods),
    up() {
      mode = 'up';
      const waiting = queue;
      queue = [];
      for (const run of waiting) run();
    },
  };
}

/** A store that the test can restart empty, as a Redis without persistence restarts. */
export function restartableStore(create: () => SessionStore): { store: SessionStore; restart(): Promise<void>; close(): Promise<void> } {
  let current = create();
  const store = new Proxy({} as SessionStore, {
    get(_target, name) {
      const value = Reflect.get(current, name) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(current) : value;
    },
  });
  return {
    store,
    async restart() {
      const old = current;
      current = create();
      await old.close();
    },
    close: () => current.close(),
  };
}
