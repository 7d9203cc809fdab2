import { InvalidOptionError, redacted } from './errors.js';

// Option checking, written once: every public factory (the proxy, the worker,
// both stores) describes its options as a schema of known keys, and
// `parseOptions` checks them at construction. Each field says what a valid
// value is ("must be …"); every refusal is an `InvalidOptionError` that names
// the option by its dotted path and never shows a secret.

/** What the fields checked before this one resolved to, by key (for bounds that depend on another option). */
export type Resolved = Readonly<Record<string, unknown>>;

/** One option: checks a value (undefined when absent) and returns what it resolves to. */
export interface Field<T> {
  /** What a valid value is, as the error says it after the option's name ("must be …"). */
  readonly expected: (resolved: Resolved) => string;
  /** Throws an `InvalidOptionError` naming `name` for a bad value. */
  resolve(value: unknown, name: string, resolved: Resolved): T;
}

/** The options of one factory: each known key and its field, checked in this order. */
export type Schema<T> = { readonly [K in keyof T]-?: Field<T[K]> };

/** Refuses `value` for option `name`. `secret` shows only its kind and length. */
export function refuse(name: string, expected: string, value: unknown, secret = false): never {
  throw new InvalidOptionError(name, expected, secret ? redacted(value) : value);
}

/**
 * Checks `options` against `schema`: an object whose keys are all known
 * (an unknown one is refused, listing the known ones), each field resolved in
 * the schema's order. `path` prefixes the names in errors (`hedge` gives
 * `hedge.delay`); at the top level a non-object is named `options`.
 */
export function parseOptions<T>(schema: Schema<T>, options: unknown, path = ''): T {
  if (typeof options !== 'object' || options === null || Array.isArray(options)) refuse(path || 'options', expectedObject(schema, path), options);
  const known = Object.keys(schema);
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) refuse(join(path, key), `is not an option (known: ${known.join(', ')})`, (options as Record<string, unknown>)[key]);
  }
  const resolved: Record<string, unknown> = {};
  for (const key of known) {
    const field = (schema as Record<string, Field<unknown>>)[key]!;
    resolved[key] = field.resolve((options as Record<string, unknown>)[key], join(path, key), resolved);
  }
  return resolved as T;
}

function join(path: string, key: string): string {
  return path ? `${path}.${key}` : key;
}

function expectedObject(schema: object, path: string): string {
  return path ? `must be { ${Object.keys(schema).join('?, ')}? }` : 'must be an object';
}

/** A default: a value, or computed from the options resolved before it. */
type Default<T> = T | ((resolved: Resolved) => T);

function fallback<T>(d: Default<T>, resolved: Resolved): T {
  return typeof d === 'function' ? (d as (r: Resolved) => T)(resolved) : d;
}

/** A field from its description and check; `undefined` takes the default when there is one, else is refused (required). */
export function field<T>(expected: string | ((resolved: Resolved) => string), check: (value: unknown, resolved: Resolved) => boolean, options: { default?: Default<T>; secret?: boolean } = {}): Field<T> {
  const describe = typeof expected === 'string' ? () => expected : expected;
  const hasDefault = 'default' in options;
  return {
    expected: describe,
    resolve(value, name, resolved) {
      if (value === undefined && hasDefault) return fallback(options.default as Default<T>, resolved);
      if (!check(value, resolved)) refuse(name, describe(resolved), value, options.secret);
      return value as T;
    },
  };
}

/** The field, or `undefined` when the option is absent. */
export function optional<T>(inner: Field<T>): Field<T | undefined> {
  return {
    expected: inner.expected,
    resolve: (value, name, resolved) => (value === undefined ? undefined : inner.resolve(value, name, resolved)),
  };
}

/** A bound that is another option's value: shown as `name (value)`. */
export interface Bound {
  /** How the error names it, e.g. `connections` or `the number of upstreams`. */
  label: string;
  value: (resolved: Resolved) => number;
}

export interface NumberSpec {
  /** A safe integer. */
  integer?: boolean;
  /** Said in the error: `a number of milliseconds`. */
  unit?: 'milliseconds' | 'bytes' | 'seconds';
  /** Inclusive lower bound. */
  min?: number | Bound;
  /** Exclusive lower bound. */
  above?: number;
  /** Inclusive upper bound. */
  max?: number | Bound;
  /** Lets `Infinity` through (a number that is not an integer must otherwise be finite). */
  infinite?: boolean;
  default?: Default<number>;
}

/** The longest a Node timer can wait, in ms (2^31 - 1): a longer one fires at once. */
export const MAX_TIMER_MS = 2_147_483_647;

/** A number in a range: `number({ unit: 'milliseconds', above: 0, default: 1000 })`. */
export function number(spec: NumberSpec): Field<number> {
  const bound = (b: number | Bound, resolved: Resolved) => (typeof b === 'number' ? b : b.value(resolved));
  const show = (b: number | Bound, resolved: Resolved) => (typeof b === 'number' ? String(b) : `${b.label} (${b.value(resolved)})`);
  const expected = (resolved: Resolved): string => {
    const noun = `${spec.integer ? 'an integer' : 'a number'}${spec.unit ? `${spec.integer ? ' number' : ''} of ${spec.unit}` : ''}`;
    const { min, above, max } = spec;
    if (min !== undefined && max !== undefined) return `must be ${noun} from ${show(min, resolved)} to ${show(max, resolved)}`;
    const parts: string[] = [];
    if (above !== undefined) parts.push(`> ${above}`);
    if (min !== undefined) parts.push(`>= ${show(min, resolved)}`);
    if (max !== undefined) parts.push(`<= ${show(max, resolved)}`);
    return `must be ${noun}${parts.length ? ` ${parts.join(' and ')}` : ''}`;
  };
  const check = (v: unknown, resolved: Resolved): boolean => {
    if (typeof v !== 'number' || Number.isNaN(v)) return false;
    if (spec.integer ? !Number.isSafeInteger(v) : !spec.infinite && !Number.isFinite(v)) return false;
    if (spec.above !== undefined && !(v > spec.above)) return false;
    if (spec.min !== undefined && v < bound(spec.min, resolved)) return false;
    if (spec.max !== undefined && v > bound(spec.max, resolved)) return false;
    return true;
  };
  return field(expected, check, 'default' in spec ? { default: spec.default! } : {});
}

/** One of a few literal values: `oneOf(['Strict', 'Lax', 'None'], 'Lax')`. */
export function oneOf<const V extends readonly (string | number | boolean)[]>(values: V, ...d: [] | [Default<V[number]>]): Field<V[number]> {
  const shown = values.map((v) => (typeof v === 'string' ? `'${v}'` : String(v)));
  const list = shown.length > 1 ? `${shown.slice(0, -1).join(', ')} or ${shown[shown.length - 1]}` : shown.join('');
  return field(`must be ${list}`, (v) => values.includes(v as V[number]), d.length ? { default: d[0] } : {});
}

/** `true` or `false`. */
export function boolean(d: boolean): Field<boolean> {
  return field('must be true or false', (v) => typeof v === 'boolean', { default: d });
}

/** A function (a hook, a clock); absent takes `d`, if given. */
export function func<F extends (...args: never[]) => unknown>(...d: [] | [F]): Field<F> {
  // The default is a function itself: wrapped, so that it is not taken for a computed default.
  const d0 = d[0];
  return field<F>('must be a function', (v) => typeof v === 'function', d.length ? { default: () => d0! } : {});
}

/** A string that `test` accepts. */
export function string(expected: string, test: (s: string) => boolean, ...d: [] | [Default<string>]): Field<string> {
  return field(expected, (v) => typeof v === 'string' && test(v), d.length ? { default: d[0] } : {});
}

/** A shared HMAC key: a string or Buffer of at least 16 characters/bytes, never shown in an error. */
export function secret(): Field<string | Buffer | undefined> {
  return optional(
    field<string | Buffer>('must be a string or Buffer of at least 16 characters/bytes', (v) => (typeof v === 'string' || Buffer.isBuffer(v)) && v.length >= 16, {
      // Never the secret itself in the message: option errors end up in logs.
      secret: true,
    }),
  );
}

/** Nested options, checked against their own schema; absent gives `{}`'s result (every default). */
export function object<T>(schema: Schema<T>): Field<T> {
  return {
    expected: () => expectedObject(schema, 'x'),
    resolve: (value, name) => parseOptions(schema, value ?? {}, name),
  };
}

/** Nested options that `false` turns off; the error for another non-object says so. */
export function objectOrFalse<T>(schema: Schema<T>): Field<T | false> {
  const expected = `${expectedObject(schema, 'x')} or false`;
  return {
    expected: () => expected,
    resolve(value, name) {
      if (value === false) return false;
      if (value !== undefined && (typeof value !== 'object' || value === null)) refuse(name, expected, value);
      return parseOptions(schema, value ?? {}, name);
    },
  };
}

/** A field with a further check once the inner field accepted the value (a check across options, say). */
export function refine<T>(inner: Field<T>, expected: string | ((resolved: Resolved) => string), test: (value: T, resolved: Resolved) => boolean): Field<T> {
  const describe = typeof expected === 'string' ? () => expected : expected;
  return {
    expected: inner.expected,
    resolve(value, name, resolved) {
      const out = inner.resolve(value, name, resolved);
      if (!test(out, resolved)) refuse(name, describe(resolved), value);
      return out;
    },
  };
}

/** A field whose resolution is written by hand (a list, a union of forms), still named by its path. */
export function custom<T>(expected: string, resolve: (value: unknown, name: string, resolved: Resolved) => T): Field<T> {
  return { expected: () => expected, resolve };
}
