// The latency model shared by the upstreams (bench/upstream.js) and the
// "ideal" computed in bench/run.js, so that both draw the very same numbers.
//
// Each upstream owns a seeded PRNG and draws one latency per request it
// receives, in the order it receives them:
//   90% of answers take 1-3 ms (uniform), 10% take 50-150 ms (uniform).

export const FAST = { p: 0.9, min: 1, max: 3 };
export const SLOW = { min: 50, max: 150 };

/** Seeds of upstreams a, b, c (any three distinct 32-bit numbers). */
export const SEEDS = { a: 0x5eed_0001, b: 0x5eed_0002, c: 0x5eed_0003 };

/** mulberry32: a tiny, fast, seeded 32-bit PRNG returning numbers in [0, 1). */
export function mulberry32(seed) {
  let s = seed >>> 0;
  return function next() {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** One latency draw, in ms, from the heavy-tailed model. Uses two numbers of `rng`. */
export function heavyTail(rng) {
  const mode = rng();
  const u = rng();
  return mode < FAST.p ? FAST.min + (FAST.max - FAST.min) * u : SLOW.min + (SLOW.max - SLOW.min) * u;
}

/** The median (mean of the two middle values for an even count), or null for none. */
export function median(xs) {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** p in [0, 1] of an ascending-sorted array (nearest rank). */
export function quantile(sorted, p) {
  const n = sorted.length;
  if (n === 0) return NaN;
  return sorted[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))];
}

export function summarize(values) {
  const sorted = Float64Array.from(values).sort();
  const mean = sorted.reduce((a, b) => a + b, 0) / (sorted.length || 1);
  return {
    n: sorted.length,
    mean,
    p50: quantile(sorted, 0.5),
    p90: quantile(sorted, 0.9),
    p95: quantile(sorted, 0.95),
    p99: quantile(sorted, 0.99),
    p999: quantile(sorted, 0.999),
    max: sorted[sorted.length - 1] ?? NaN,
  };
}

/**
 * Simulates the model with the upstreams' own PRNG streams: what a perfect,
 * zero-overhead proxy would achieve on the same draws.
 *
 * - direct: request i takes upstream a's i-th draw;
 * - race: every request goes to all three at once and takes the minimum
 *   (request i takes min(a_i, b_i, c_i): each upstream sees every request);
 * - hedged(delay): the first copy goes to the upstream the proxy's rotation
 *   picks, a second one `delay` ms later if the first has not answered, a
 *   third at 2 × delay; each upstream's stream is consumed by the copies it
 *   receives, as the real upstreams do.
 *
 * `rotationStart` is the proxy's rotation counter when measurement starts
 * (the number of warm-up requests it served before).
 */
export function simulate({ n, delay, rotationStart = 0, seeds = SEEDS }) {
  const ids = Object.keys(seeds);
  const direct = [];
  const race = [];
  {
    const rngs = ids.map((id) => mulberry32(seeds[id]));
    for (let i = 0; i < n; i++) {
      const draws = rngs.map((r) => heavyTail(r));
      direct.push(draws[0]);
      race.push(Math.min(...draws));
    }
  }
  let hedged = null;
  if (delay !== undefined) {
    const rngs = ids.map((id) => mulberry32(seeds[id]));
    const times = [];
    let extra = 0;
    for (let i = 0; i < n; i++) {
      const start = (rotationStart + i) % ids.length;
      let best = heavyTail(rngs[start]);
      for (let k = 1; k < ids.length; k++) {
        const sendAt = k * delay;
        if (best <= sendAt) break;
        extra++;
        best = Math.min(best, sendAt + heavyTail(rngs[(start + k) % ids.length]));
      }
      times.push(best);
    }
    hedged = { times, extraCopiesPerRequest: extra / n };
  }
  return { direct, race, hedged };
}
