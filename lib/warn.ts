// Failures that nobody listens for are said once on the console, not once per
// request: a store that is down must not flood the logs, and must not go
// unnoticed either.

/** `say` (by default `console.warn`, looked up when it speaks), the first time only; later calls are silent. */
export function warnOnce(say: (message: string, detail?: unknown) => void = (message, detail) => console.warn(message, detail)): (message: string, detail?: unknown) => void {
  let said = false;
  return (message, detail) => {
    if (said) return;
    said = true;
    say(message, detail);
  };
}

/** What `reportError` needs of an emitter: its `error` event. */
export interface ErrorEmitter<E> {
  has(name: 'error'): boolean;
  emit(name: 'error', event: E): void;
}

/**
 * A reporter of failures: to the emitter's `error` listeners when it has any;
 * without one, a console warning (`message(event)`, then the error), once,
 * saying that further failures are silent.
 */
export function reportError<E extends { error: unknown }>(events: ErrorEmitter<E>, message: (event: E) => string, say?: (message: string, detail?: unknown) => void): (event: E) => void {
  const warn = warnOnce(say);
  return (event) => {
    if (events.has('error')) events.emit('error', event);
    else warn(`${message(event)} (further failures are silent without an 'error' listener):`, event.error);
  };
}
