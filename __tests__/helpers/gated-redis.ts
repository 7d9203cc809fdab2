import type { Redis } from 'ioredis';

// An ioredis client whose calls a test can hold and let go, to put the
// commands of a store in the order a race needs, deterministically. It wraps
// the client in a Proxy: the commands being held are parked (not sent to
// Redis) until the test lets them go; every other call goes straight through.
// `duplicate()` is wrapped too, so the pub/sub connection a store opens for
// itself is gated the same way (its `ssubscribe`, `sunsubscribe`, …).

/** A call parked by the gate: not sent to Redis until `send()`. */
export interface HeldCall {
  readonly command: string;
  readonly args: unknown[];
  /** For EVALSHA / EVAL: the keys and the arguments after them. */
  readonly keys: unknown[];
  readonly argv: unknown[];
  /** Sends it to Redis; the caller gets Redis' answer, and so does the test. */
  send(): Promise<unknown>;
}

export interface Gate {
  /** The client to hand to the code under test. */
  readonly client: Redis;
  /** The pub/sub connection the code under test opened through `duplicate()`, unwrapped (for the test's own listeners). */
  readonly duplicated: Redis | undefined;
  /** Every call of a watched command, held or not, in order. */
  readonly log: Array<{ command: string; args: unknown[] }>;
  /** From now on, park calls of these commands. */
  hold(...commands: string[]): void;
  /** From now on, send calls of these commands at once (calls parked already stay parked). */
  pass(...commands: string[]): void;
  /** The oldest parked call of `command`, or the next one; rejects if none comes within `withinMs`. */
  next(command: string, withinMs?: number): Promise<HeldCall>;
  /** Sends every parked call. */
  sendAll(): Promise<void>;
}

const WATCHED = new Set(['evalsha', 'eval', 'ssubscribe', 'sunsubscribe', 'subscribe', 'unsubscribe']);

export function gate(client: Redis): Gate {
  const held = new Set<string>();
  const parked: HeldCall[] = [];
  const wanted: Array<{ command: string; take: (call: HeldCall) => void }> = [];
  const log: Array<{ command: string; args: unknown[] }> = [];
  let duplicated: Redis | undefined;

  const park = (command: string, args: unknown[], run: () => Promise<unknown>): Promise<unknown> =>
    new Promise((resolve, reject) => {
      const eval_ = command === 'evalsha' || command === 'eval';
      const numKeys = eval_ ? Number(args[1]) : 0;
      let sent: Promise<unknown> | undefined;
      const call: HeldCall = {
        command,
        args,
        keys: eval_ ? args.slice(2, 2 + numKeys) : [],
        argv: eval_ ? args.slice(2 + numKeys) : args,
        send() {
          if (!sent) {
            sent = run();
            sent.then(resolve, reject);
          }
          return sent.catch((err: unknown) => err);
        },
      };
      const waiting = wanted.findIndex((w) => w.command === command);
      if (waiting !== -1) wanted.splice(waiting, 1)[0]!.take(call);
      else parked.push(call);
    });

  const wrap = <T extends object>(target: T): T =>
    new Proxy(target, {
      get(t, name) {
        const value = Reflect.get(t, name) as unknown;
        if (name === 'duplicate') {
          return (...a: unknown[]) => {
            const copy = (value as (...x: unknown[]) => Redis).apply(t, a);
            duplicated = copy;
            return wrap(copy);
          };
        }
        if (typeof value !== 'function') return value;
        const fn = value as (...x: unknown[]) => unknown;
        if (typeof name === 'string' && WATCHED.has(name)) {
          return (...args: unknown[]) => {
            log.push({ command: name, args });
            const run = () => fn.apply(t, args) as Promise<unknown>;
            return held.has(name) ? park(name, args, run) : run();
          };
        }
        return fn.bind(t);
      },
    });

  return {
    client: wrap(client),
    get duplicated() {
      return duplicated;
    },
    log,
    hold(...commands) {
      for (const c of commands) held.add(c);
    },
    pass(...commands) {
      for (const c of commands) held.delete(c);
    },
    next(command, withinMs = 2_000) {
      const at = parked.findIndex((c) => c.command === command);
      if (at !== -1) return Promise.resolve(parked.splice(at, 1)[0]!);
      return new Promise<HeldCall>((resolve, reject) => {
        const entry = {
          command,
          take: (call: HeldCall) => {
            clearTimeout(timer);
            resolve(call);
          },
        };
        // A bound on how long the test waits for a call that should come, not a pause.
        const timer = setTimeout(() => {
          wanted.splice(wanted.indexOf(entry), 1);
          reject(new Error(`no ${command} call within ${withinMs} ms`));
        }, withinMs);
        wanted.push(entry);
      });
    },
    async sendAll() {
      held.clear();
      await Promise.all(parked.splice(0).map((c) => c.send()));
    },
  };
}

/** Resolves after every microtask queued so far (and those they queue) has run. */
export function settled(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** `promise`, or a rejection naming `what` if it does not settle within `withinMs` (a bound on the test, not a pause). */
export function within<T>(promise: Promise<T>, what: string, withinMs = 2_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${withinMs} ms`)), withinMs);
  });
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer));
}

/**
 * The client as a Cluster client would look to a store, over a single Redis:
 * the store then takes its Cluster paths (a fencing token first, then the
 * claim; a sharded channel per waited-for request) on this server. Its
 * pub/sub connection is an ordinary duplicate.
 */
export function asCluster(client: Redis): Redis {
  return new Proxy(client, {
    get(target, name) {
      if (name === 'isCluster') return true;
      if (name === 'duplicate') return () => target.duplicate({ enableOfflineQueue: true, lazyConnect: false, maxRetriesPerRequest: null });
      const value = Reflect.get(target, name) as unknown;
      return typeof value === 'function' ? (value as (...x: unknown[]) => unknown).bind(target) : value;
    },
  });
}
