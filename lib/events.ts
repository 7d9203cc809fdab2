// A small typed event emitter. A listener that throws is reported on the
// emitter's `error` path (console, once per emitter) and never breaks the
// request that emitted the event.

import { warnOnce } from './warn.js';

/** Returned by `.on()`: call `dispose()` to remove the listener. */
export interface Disposable {
  dispose(): void;
}

type Listener<T> = (event: T) => void;

/** Every name of `Events`, listed once: the type fails to check when one is missing. */
export type EventNames<Events extends object> = readonly (keyof Events & string)[];

export class Emitter<Events extends object> {
  readonly #listeners = new Map<keyof Events, Set<Listener<never>>>();
  readonly #warn = warnOnce((message, detail) => console.error(message, detail));
  readonly #names: ReadonlySet<string>;

  /** `names`: the events there are; `.on()` refuses any other name (a misspelt one would never fire). */
  constructor(names: EventNames<Events>) {
    this.#names = new Set(names);
  }

  on<K extends keyof Events>(name: K, listener: Listener<Events[K]>): Disposable {
    if (!this.#names.has(name as string)) throw new TypeError(`redundant-proxy: there is no event "${String(name)}"; the events are ${[...this.#names].join(', ')}`);
    if (typeof listener !== 'function') throw new TypeError('redundant-proxy: a listener must be a function');
    let set = this.#listeners.get(name);
    if (!set) this.#listeners.set(name, (set = new Set()));
    set.add(listener as Listener<never>);
    return { dispose: () => void set.delete(listener as Listener<never>) };
  }

  /** True when someone listens: callers skip building an event nobody reads. */
  has(name: keyof Events): boolean {
    const set = this.#listeners.get(name);
    return set !== undefined && set.size > 0;
  }

  emit<K extends keyof Events>(name: K, event: Events[K]): void {
    const set = this.#listeners.get(name);
    if (!set) return;
    for (const listener of set) {
      try {
        (listener as Listener<Events[K]>)(event);
      } catch (err) {
        this.#warn(`redundant-proxy: a listener of "${String(name)}" threw (reported once):`, err);
      }
    }
  }

  clear(): void {
    this.#listeners.clear();
  }
}
