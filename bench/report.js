// Turns bench results into docs/benchmarks.md and docs/latency-cdf.svg.
// Called by bench/run.js after a full run; `node bench/report.js [results.json]`
// regenerates both from bench/results/latest.json (or the given file).
// bench/notes.md, when present, is copied into the report as "Findings".

import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { capacity, plan } from './capacity.js';
import { FAST, SLOW } from './model.js';

const docs = new URL('../docs/', import.meta.url);

const f1 = (x) => (x === null || x === undefined || Number.isNaN(x) ? '–' : x.toFixed(1));
const f2 = (x) => (x === null || x === undefined || Number.isNaN(x) ? '–' : x.toFixed(2));
const int = (x) => (x === null || x === undefined ? '–' : Math.round(x).toLocaleString('en-US'));
const pct = (x) => `${(x * 100).toFixed(1)}%`;
const mark = (met) => (met ? '✅ met' : '❌ **missed**');

// ---------------------------------------------------------------- SVG

const COLORS = { direct: '#d62728', racing: '#1f77b4', 'racing-koa': '#17becf', hedged: '#ff7f0e', 'hedged-10': '#2ca02c', 'hedged-adaptive': '#bcbd22', 'ref-abort': '#8c8c8c', 'ref-drain': '#9467bd', ideal: '#222222' };
const DASH = { 'ref-abort': '2 3', 'ref-drain': '2 3', ideal: '7 5' };
const WIDTH = { 'ref-abort': 1.6, 'ref-drain': 1.6 };
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/**
 * CDF of scenario b: latency on a log axis; the cumulative share on a
 * "nines" axis (-log10(1 - F)) so that p90, p99 and p99.9 get equal room.
 */
export function cdfSvg(b) {
  const series = b.contestants.map((c) => ({ name: c.name, label: c.label, values: c.latencies, dash: DASH[c.name] ?? null }));
  series.push({ name: 'ideal', label: 'ideal: min of 3 draws, zero overhead (model)', values: b.model.idealLatencies, dash: DASH.ideal });
  const legendRows = Math.ceil(series.length / 2);
  const W = 860;
  const m = { left: 78, right: 24, top: 52, bottom: 74 + legendRows * 22 };
  const H = 470 + legendRows * 22;
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const all = series.flatMap((s) => s.values);
  const lo = Math.min(...all);
  const hi = Math.max(...all);
  const ticksX = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];
  const xmin = [...ticksX].reverse().find((t) => t <= lo) ?? 0.1;
  const xmax = ticksX.find((t) => t >= hi) ?? 10_000;
  const n = Math.max(...series.map((s) => s.values.length));
  const ymax = Math.min(4, Math.log10(n) - 0.3 > 3 ? 3.3 : Math.log10(n));
  const X = (v) => m.left + ((Math.log10(Math.max(v, xmin)) - Math.log10(xmin)) / (Math.log10(xmax) - Math.log10(xmin))) * pw;
  const Y = (nines) => m.top + ph - (Math.min(nines, ymax) / ymax) * ph;
  const nines = (F) => (F >= 1 ? Infinity : -Math.log10(1 - F));

  const out = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="13">`);
  out.push(`<rect width="${W}" height="${H}" fill="#ffffff"/>`);
  out.push(`<text x="${W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">Scenario b: latency CDF, open loop at ${b.config.rate} req/s, ${b.config.requests.toLocaleString('en-US')} requests each</text>`);
  out.push(`<text x="${W / 2}" y="42" text-anchor="middle" font-size="12" fill="#555">upstream model: ${FAST.p * 100}% in ${FAST.min}–${FAST.max} ms, ${Math.round((1 - FAST.p) * 100)}% in ${SLOW.min}–${SLOW.max} ms (seeded); further left at the top is better</text>`);
  out.push(`<defs><clipPath id="plot"><rect x="${m.left}" y="${m.top}" width="${pw}" height="${ph}"/></clipPath></defs>`);
  // grid and ticks
  out.push(`<g stroke="#e3e3e3" stroke-width="1">`);
  for (const t of ticksX) if (t >= xmin && t <= xmax) out.push(`<line x1="${X(t).toFixed(1)}" y1="${m.top}" x2="${X(t).toFixed(1)}" y2="${m.top + ph}"/>`);
  const ticksY = [
    [0, '0%'],
    [Math.log10(2), '50%'],
    [1, '90%'],
    [2, '99%'],
    [3, '99.9%'],
    [4, '99.99%'],
  ].filter(([v]) => v <= ymax + 1e-9);
  for (const [v] of ticksY) out.push(`<line x1="${m.left}" y1="${Y(v).toFixed(1)}" x2="${m.left + pw}" y2="${Y(v).toFixed(1)}"/>`);
  out.push(`</g>`);
  out.push(`<g fill="#333">`);
  for (const t of ticksX) if (t >= xmin && t <= xmax) out.push(`<text x="${X(t).toFixed(1)}" y="${m.top + ph + 18}" text-anchor="middle">${t}</text>`);
  for (const [v, label] of ticksY) out.push(`<text x="${m.left - 8}" y="${(Y(v) + 4).toFixed(1)}" text-anchor="end">${label}</text>`);
  out.push(`</g>`);
  out.push(`<rect x="${m.left}" y="${m.top}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`);
  out.push(`<text x="${m.left + pw / 2}" y="${m.top + ph + 40}" text-anchor="middle" font-size="14">latency in ms, from each request's send to the end of its body (log scale)</text>`);
  out.push(`<text transform="translate(20 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle" font-size="14">requests answered within x (scale stretched toward 100%)</text>`);
  // curves
  out.push(`<g clip-path="url(#plot)" fill="none" stroke-width="2.2" stroke-linejoin="round">`);
  for (const s of series) {
    const sorted = Float64Array.from(s.values).sort();
    const pts = [];
    let lx = -1;
    let ly = -1;
    for (let i = 0; i < sorted.length; i++) {
      const F = (i + 1) / sorted.length;
      const x = X(sorted[i]);
      const y = Y(nines(F));
      const last = i === sorted.length - 1;
      if (last || Math.abs(x - lx) >= 0.6 || Math.abs(y - ly) >= 0.6) {
        pts.push(`${x.toFixed(1)},${y.toFixed(1)}`);
        lx = x;
        ly = y;
      }
    }
    out.push(`<polyline stroke="${COLORS[s.name] ?? '#8c564b'}"${WIDTH[s.name] ? ` stroke-width="${WIDTH[s.name]}"` : ''}${s.dash ? ` stroke-dasharray="${s.dash}"` : ''} points="${pts.join(' ')}"/>`);
  }
  out.push(`</g>`);
  // legend, under the plot in two columns (the curves fill the plot's corners)
  const colW = pw / 2;
  series.forEach((s, i) => {
    const x0 = m.left + (i % 2) * colW;
    const y = H - m.bottom + 62 + Math.floor(i / 2) * 22;
    const c = b.contestants.find((x) => x.name === s.name);
    const p99 = c ? c.p99 : b.model.race.p99;
    const name =
      s.name === 'ideal'
        ? 'ideal (model: min of 3 draws)'
        : s.label
            .replace('redundant-proxy (node:http), ', 'ours: ')
            .replace('redundant-proxy in Koa, ', 'ours in Koa: ')
            .replace(/hedge: \{ delay: 'adaptive', maxExtraLoad: ([\d.]+) \} \(the p[\d.]+\)/, 'adaptive hedge, budget $1')
            .replace(' (30 lines)', '');
    out.push(`<line x1="${x0}" y1="${y - 4}" x2="${x0 + 30}" y2="${y - 4}" stroke="${COLORS[s.name] ?? '#8c564b'}" stroke-width="${WIDTH[s.name] ?? 2.5}"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`);
    out.push(`<text x="${x0 + 38}" y="${y}">${esc(name)}, p99 ${f1(p99)} ms</text>`);
  });
  out.push(`</svg>`);
  return `${out.join('\n')}\n`;
}

// ---------------------------------------------------------------- Markdown

/** The requests/s of every round of a closed-loop scenario (a, c). */
function roundsTable(L, contestants) {
  L.push('Requests/s of each round:');
  L.push('');
  L.push('| contestant | ' + contestants[0].rounds.map((_, i) => `round ${i + 1}`).join(' | ') + ' |');
  L.push('| --- | ' + contestants[0].rounds.map(() => '---:').join(' | ') + ' |');
  for (const x of contestants) L.push(`| ${x.name} | ${x.rounds.map((q) => int(q.rps)).join(' | ')} |`);
  L.push('');
}

export function markdown(r) {
  const L = [];
  const { a, b, c } = r.scenarios;
  L.push('# Benchmarks');
  L.push('');
  L.push('Generated by `bench/run.js` from `bench/results/latest.json`; the "Findings" section is written by hand (`bench/notes.md`).');
  L.push('Every number below was measured in the run described here, on one shared machine, on loopback: treat');
  L.push('the ratios (measured side by side, contestants alternated) as more telling than the absolute figures.');
  L.push('');
  L.push('| | |');
  L.push('| --- | --- |');
  L.push(`| command | \`${r.command}\` (\`npm run bench -- --quick\` for a run under a minute) |`);
  L.push(`| date | ${r.date} |`);
  L.push(`| machine | ${r.machine.nproc} CPUs (\`nproc\`), ${esc(r.machine.cpu)}, ${r.machine.platform} |`);
  L.push(`| node | ${r.machine.node} |`);
  if (r.library) {
    L.push(`| library | commit \`${r.library.commit}\`${r.library.uncommittedLibFiles.length ? ` plus uncommitted changes to ${r.library.uncommittedLibFiles.map((f) => `\`${f}\``).join(', ')}` : ''} at the time of the run; built \`dist/\` sha256 \`${r.library.distSha256}\` |`);
  }
  L.push(`| load average | ${r.machine.loadavgAtStart.map(f2).join(' ')} at start, ${r.machine.loadavgAtEnd.map(f2).join(' ')} at the end (shared, noisy machine) |`);
  L.push(`| duration | ${Math.round(r.durationSec)} s |`);
  L.push('');
  L.push('## Targets');
  L.push('');
  L.push('| scenario | target | measured | |');
  L.push('| --- | --- | --- | --- |');
  for (const t of r.targets) L.push(`| ${t.scenario} | ${t.target} | ${t.display} | ${mark(t.met)} |`);
  L.push('');

  if (a) {
    L.push('## a. Overhead: one upstream, `copies: 1`');
    L.push('');
    L.push(`One upstream in its own process answering a tiny JSON body at once; each gateway in its own process, alone while it is measured.`);
    L.push(`autocannon (programmatic) with ${a.config.connections} keep-alive connections, ${int(a.config.warmupRequests)} warm-up requests then ${a.config.durationSec} s measured,`);
    L.push(`${a.config.rounds} rounds with the contestants' order rotated each round; the table shows the median of the rounds.`);
    L.push('Latencies are autocannon\'s (whole milliseconds). Gateway CPU is `process.cpuUsage()` in the gateway process over the measured window, per request served.');
    L.push('');
    L.push('| contestant | req/s | vs @fastify/http-proxy | p50 ms | p99 ms | gateway CPU µs/request | errors |');
    L.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
    const ref = a.contestants.find((x) => x.name === 'fastify-http-proxy').rps;
    for (const x of a.contestants) {
      L.push(`| ${x.label} | ${int(x.rps)} | ${x.name === 'direct' ? '–' : `${f2(x.rps / ref)}×`} | ${x.p50} | ${x.p99} | ${x.cpuMicrosPerRequest === null ? '–' : int(x.cpuMicrosPerRequest)} | ${x.errors} |`);
    }
    const alone = a.contestants.find((x) => x.name === 'express-alone');
    if (alone) {
      L.push('');
      L.push(`The last row is not a proxy: Express 5 answering the same JSON itself, with no upstream hop, made ${f2(alone.rps / ref)}× the requests/s of`);
      L.push('@fastify/http-proxy. That is the ceiling of any Express middleware on this machine, ours and http-proxy-middleware alike.');
    }
    L.push('');
    roundsTable(L, a.contestants);
  }

  if (b) {
    const by = Object.fromEntries(b.contestants.map((x) => [x.name, x]));
    L.push('## b. Tail latency: three heavy-tailed upstreams');
    L.push('');
    L.push(`Three upstreams (one process) whose every request to \`/work\` waits a latency drawn from a seeded PRNG (\`bench/model.js\`):`);
    L.push(`${FAST.p * 100}% uniform in ${FAST.min}–${FAST.max} ms, ${Math.round((1 - FAST.p) * 100)}% uniform in ${SLOW.min}–${SLOW.max} ms. Each contestant gets freshly started upstreams, so all meet the same draws.`);
    L.push(`Open-loop load: ${b.config.requests.toLocaleString('en-US')} requests at ${b.config.rate} req/s; request *i* is sent at t0 + i/${b.config.rate} s whether or not the earlier ones`);
    L.push(`have answered (no coordinated omission: a slow answer never delays the next sends), and timed from its own send to the end of its body.`);
    L.push(`The same requests timed from their *scheduled* instant are in the "from schedule" column: the difference is the load generator's own`);
    L.push(`timer lateness (its send lag, below), which no contestant causes but which lands on every one of them.`);
    L.push(`${int(b.config.warmup)} warm-up requests first, on a path that does not consume draws. "racing" and "hedged" use \`redundantProxy()\` as a node:http \`.handler\`;`);
    L.push(`"racing-koa" is the same race mounted in Koa.`);
    L.push('');
    L.push('| contestant | p50 ms | p99 ms | p99.9 ms | max ms | p99 from schedule, ms | extra copies / request | new upstream connections / request | errors |');
    L.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const x of b.contestants) {
      L.push(`| ${x.label} | ${f2(x.p50)} | ${f2(x.p99)} | ${f2(x.p999)} | ${f1(x.max)} | ${f2(x.fromSchedule?.p99)} | ${x.name === 'direct' ? '–' : f2(x.extraCopiesPerRequest)} | ${f2(x.newConnectionsPerRequest)} | ${x.errors + Object.entries(x.statuses).filter(([s]) => s !== '200').reduce((q, [, v]) => q + v, 0)} |`);
    }
    L.push(`| *model: one upstream* | *${f2(b.model.direct.p50)}* | *${f2(b.model.direct.p99)}* | *${f2(b.model.direct.p999)}* | *${f1(b.model.direct.max)}* | | | | |`);
    L.push(`| *ideal: min of 3 draws (model, zero overhead)* | *${f2(b.model.race.p50)}* | *${f2(b.model.race.p99)}* | *${f2(b.model.race.p999)}* | *${f1(b.model.race.max)}* | | *2.00* | | |`);
    L.push(`| *model: hedged, delay ${b.model.hedged.delay} ms* | *${f2(b.model.hedged.p50)}* | *${f2(b.model.hedged.p99)}* | *${f2(b.model.hedged.p999)}* | *${f1(b.model.hedged.max)}* | | *${f2(b.model.hedged.extraCopiesPerRequest)}* | | |`);
    if (by['hedged-10']) L.push(`| *model: hedged, delay 10 ms* | *${f2(b.model.hedged10.p50)}* | *${f2(b.model.hedged10.p99)}* | *${f2(b.model.hedged10.p999)}* | *${f1(b.model.hedged10.max)}* | | *${f2(b.model.hedged10.extraCopiesPerRequest)}* | | |`);
    L.push('');
    L.push('| ratio | value |');
    L.push('| --- | ---: |');
    L.push(`| direct p99 / racing p99 | ${f1(b.ratios['direct p99 / racing p99'])}× |`);
    L.push(`| racing p99 / ideal p99 | ${f2(b.ratios['racing p99 / ideal p99'])}× |`);
    L.push(`| hedged p99 / racing p99 | ${f2(b.ratios['hedged p99 / racing p99'])}× |`);
    L.push(`| hedged extra copies per request | ${pct(b.ratios['hedged extra copies per request'])} |`);
    L.push(`| model alone: hedged (delay ${b.model.hedged.delay} ms) p99 / ideal p99 | ${f2(b.ratios['model: hedged p99 / ideal race p99'])}× |`);
    if (by['hedged-10']) L.push(`| hedge delay 10 ms: p99 / racing p99 (extra copies) | ${f2(by['hedged-10'].p99 / by.racing.p99)}× (${pct(by['hedged-10'].extraCopiesPerRequest)}) |`);
    if (by['hedged-adaptive']) L.push(`| adaptive hedge delay (maxExtraLoad 0.25): p99 / racing p99 (extra copies) | ${f2(by['hedged-adaptive'].p99 / by.racing.p99)}× (${pct(by['hedged-adaptive'].extraCopiesPerRequest)}) |`);
    if (by['racing-koa']) L.push(`| racing in Koa: p99 / ideal p99 (direct p99 / its p99) | ${f2(by['racing-koa'].p99 / b.model.race.p99)}× (${f1(by.direct.p99 / by['racing-koa'].p99)}×) |`);
    L.push(`| from the scheduled send: direct p99 / racing p99, racing p99 / ideal p99 | ${f1(by.direct.fromSchedule.p99 / by.racing.fromSchedule.p99)}×, ${f2(by.racing.fromSchedule.p99 / b.model.race.p99)}× |`);
    L.push('');
    L.push('Where the time goes (p50 / p99, ms): the load generator\'s send lag (actual send − scheduled send) and the upstreams\' timer lateness');
    L.push('(actual wait − drawn latency, the worst of the three upstreams); the gateway columns come from the `race:end` events and, for "in the gateway",');
    L.push('from the gateway\'s `request` event to its response\'s `finish`.');
    L.push('');
    L.push('| contestant | 1-min load average before | send lag | upstream timer lateness | gateway: winning copy\'s answer | gateway: whole race | in the gateway | client: total |');
    L.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    const pp = (o) => (o && o.n ? `${f2(o.p50)} / ${f2(o.p99)}` : '–');
    for (const x of b.contestants) {
      const slop = Object.values(x.upstreams).filter((u) => u.timerSlop?.n).sort((p, q) => q.timerSlop.p99 - p.timerSlop.p99)[0]?.timerSlop;
      L.push(`| ${x.name} | ${x.loadavgBefore === undefined ? '–' : f2(x.loadavgBefore)} | ${f2(x.sendLag.p50 ?? x.sendLag.mean)} / ${f2(x.sendLag.p99)} | ${pp(slop)} | ${pp(x.gatewayWinnerLatency)} | ${pp(x.gatewayRaceDuration)} | ${pp(x.inGateway)} | ${f2(x.p50)} / ${f2(x.p99)} |`);
    }
    L.push('');
    L.push('![Latency CDF of scenario b](latency-cdf.svg)');
    L.push('');
    L.push(`**Why a hedge delay of ${b.config.hedgeDelay} ms, and not the p95.** The issue asks for a delay near the upstream p95; in this model the p95 is`);
    L.push(`about 100 ms, inside the slow mode, and hedging there would only cut the slowest 5% (p99 near 100 ms). What matters is the gap between`);
    L.push(`the two modes: every fast answer is drawn by ${FAST.max} ms (the p90) and no slow one before ${SLOW.min} ms, so a copy still unanswered after`);
    L.push(`${FAST.max} ms is almost surely a slow one. In the model any delay inside the gap hedges the same ~${pct(b.model.hedged.extraCopiesPerRequest)} of requests (the slow`);
    L.push(`first copies, plus a third copy when the second is slow too), and the p99 grows with the delay (about 2 × delay + 1.5 ms: the 1% tail is`);
    L.push(`the requests whose first two copies were both slow). So the delay is the end of the fast mode. A hedge never leaves before its delay`);
    L.push(`(Node's millisecond timers may fire up to 1 ms early; the proxy checks), and the few fast answers that reach the gateway after ${b.config.hedgeDelay} ms`);
    L.push(`get a needless hedge: the measured extra copies against the model's show how many. The 10 ms row shows what a longer delay costs.`);
    L.push('');
  }

  if (c) {
    L.push('## c. Cost of copies');
    L.push('');
    L.push(`Three fast upstreams (one process), \`redundantProxy({ copies })\` on node:http \`.handler\`, autocannon with ${c.config.connections} connections,`);
    L.push(`${int(c.config.warmupRequests)} warm-up requests then ${c.config.durationSec} s measured, ${c.config.rounds} rounds rotated, median kept. The upstreams share the same 2 CPUs, so each extra copy also costs`);
    L.push('upstream CPU on this machine (it would not on separate replicas); gateway CPU per request isolates the gateway\'s own cost.');
    L.push('');
    L.push('| contestant | req/s | vs copies: 1 | gateway CPU µs/request | gateway CPU (share of one core) | upstreams\' CPU µs/request | p50 ms | p99 ms | new upstream connections / request | errors |');
    L.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    const ref = c.contestants[0].rps;
    for (const x of c.contestants) {
      L.push(`| ${x.label} | ${int(x.rps)} | ${f2(x.rps / ref)}× | ${int(x.cpuMicrosPerRequest)} | ${pct(x.gatewayCpuShare)} | ${int(x.upstreamCpuMicrosPerRequest)} | ${x.p50} | ${x.p99} | ${f2(x.newConnectionsPerRequest)} | ${x.errors} |`);
    }
    L.push('');
    roundsTable(L, c.contestants);
  }

  const d = r.scenarios.d;
  if (d) {
    const x = d.results;
    L.push('## d. Bookkeeping: memory store vs Redis');
    L.push('');
    L.push(`One child process holds the gateway (\`redundantProxy\` on node:http, 3 copies, with a \`secret\`) and three replicas running`);
    L.push('`redundantWorker` on node:http; a read answers a tiny JSON, an update runs `commitOnce(async () => {})` (no database: the bookkeeping');
    L.push(`alone is measured). memory: one \`MemorySessionStore\` shared by all four; Redis: a \`RedisSessionStore\` per role on its own ioredis client,`);
    L.push(`against a redis-server ${d.redis.version ?? ''} this scenario starts on loopback. autocannon, ${d.config.connections} connections, ${d.config.rounds} rounds × ${d.config.durationSec} s alternating`);
    L.push('memory and Redis (reads first, then updates, each after its own warm-up); the table shows the median round.');
    L.push('');
    L.push('| store, kind | req/s | p50 / p99 ms | process CPU µs/request | Redis CPU µs/request | store calls / request | Redis scripts (commands) / request | new upstream connections / request | errors, non-2xx |');
    L.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    const calls = (c) => (c ? Object.values(c).reduce((a, v) => a + v, 0) : null);
    for (const key of ['memory-reads', 'redis-reads', 'memory-updates', 'redis-updates']) {
      const q = x[key];
      L.push(`| ${q.variant}, ${q.kind} | ${int(q.rps)} | ${q.p50} / ${q.p99} | ${int(q.nodeCpuMicrosPerRequest)} | ${q.redisCpuMicrosPerRequest === null ? '–' : int(q.redisCpuMicrosPerRequest)} | ${f1(calls(q.storeCallsPerRequest))} | ${q.redisScriptsPerRequest === null ? '–' : `${f1(q.redisScriptsPerRequest)} (${f1(q.redisCommandsPerRequest)})`} | ${f2(q.newUpstreamConnectionsPerRequest)} | ${q.errors}, ${q.non2xx} |`);
    }
    L.push('');
    L.push(`Redis ÷ memory, requests/s: reads ${f2(d.ratios['redis/memory reads req/s'])}×, updates ${f2(d.ratios['redis/memory updates req/s'])}×. Updates ÷ reads: ${f2(d.ratios['updates/reads req/s (memory)'])}× with memory, ${f2(d.ratios['updates/reads req/s (redis)'])}× with Redis.`);
    L.push('');
    const cc = d.redis.callCost;
    if (cc) {
      L.push(`What a call costs this Redis on this host, measured before the rounds (\`INFO cpu\`, calls sent one at a time unless said): a PING ${f1(cc.lone)} µs`);
      L.push(`of Redis CPU, ${f1(cc.pipelined)} µs in pipelines of 100; a raced read's four records (the request log's script) ${f1(cc.readAlone)} µs in a call of their own,`);
      L.push(`${f1(cc.readInEight)} µs a read in a call holding eight reads' records. A script call that wakes Redis alone pays about a PING's cost (calls that`);
      L.push(`arrive together share it): at ${f2(x['redis-reads'].redisScriptsPerRequest)} script calls a read, about ${int(cc.lone * x['redis-reads'].redisScriptsPerRequest)} µs of the read's ${int(x['redis-reads'].redisCpuMicrosPerRequest)} µs; the rest is the records' writes,`);
      L.push('dearer here than in the probe: Redis shares the two cores with the gateway, the replicas and the load generator.');
      L.push('');
    }
  }

  const f = r.scenarios.f;
  if (f) {
    L.push('## f. What the store costs per request');
    L.push('');
    L.push('One child process per store: a gateway (`redundantProxy` on node:http, with a `secret`) in front of five replicas running');
    L.push('`redundantWorker` (a–e), rebuilt for each number of copies. memory: one `MemorySessionStore` shared by all; Redis: a');
    L.push(`\`RedisSessionStore\` per role on its own ioredis client, against a redis-server ${f.redis.version ?? ''} this scenario starts. Counts from`);
    L.push(`${f.config.count} requests per cell, ${f.config.concurrency} at a time: store calls (gateway and workers together), Redis scripts and commands`);
    L.push('(`INFO commandstats`, commands inside scripts included), Redis CPU (user + system of the redis-server process, `INFO cpu`). Round trips');
    L.push(`on the critical path: every store call delayed by ${f.config.delayMs} ms, (median latency with − without) ÷ ${f.config.delayMs} ms over ${f.config.latencyRequests} sequential`);
    L.push('requests: the store round trips the client waits for (parallel calls count once; bookkeeping after the answer not at all).');
    L.push('Kinds: *read* without a session cookie; *read+session* with the cookie of an existing session; *session update* changes the');
    L.push('session and commits nothing; *update* runs `commitOnce`; *keyed update* is an update with its own `Idempotency-Key`.');
    L.push('');
    L.push('| store | copies | kind | store calls / request | critical-path round trips | Redis scripts / request | Redis commands / request | Redis CPU µs / request |');
    L.push('| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |');
    for (const variant of ['memory', 'redis', 'cluster']) {
      for (const [copies, cells] of Object.entries(f.results[variant] ?? {})) {
        for (const [kind, c] of Object.entries(cells)) {
          L.push(`| ${variant} | ${copies} | ${kind} | ${f2(c.storeCallsTotalPerRequest)} | ${f1(c.criticalPathRoundTrips)} | ${c.redisScriptsPerRequest === undefined ? '–' : f2(c.redisScriptsPerRequest)} | ${c.redisCommandsPerRequest === undefined ? '–' : f1(c.redisCommandsPerRequest)} | ${c.redisCpuMicrosPerRequest == null ? '–' : int(c.redisCpuMicrosPerRequest)} |`);
        }
      }
    }
    L.push('');
    L.push('Store calls by method, per request (copies: 3):');
    L.push('');
    for (const variant of ['memory', 'redis', 'cluster']) {
      const cells = f.results[variant]?.[3];
      if (!cells) continue;
      for (const [kind, c] of Object.entries(cells)) L.push(`- ${variant}, ${kind}: ${Object.entries(c.storeCallsPerRequest).map(([m, v]) => `${m} ${f2(v)}`).join(', ')}`);
    }
    L.push('');
    const sat = f.saturation;
    if (sat?.read) {
      L.push('At the limit (measured points for the capacity model): the store traffic of raced reads (three copies recorded by three stores,');
      L.push('one adoption by a fourth) and of committed updates (three copies recorded, three claims of which one confirms, the adoption),');
      L.push(`made directly on the stores by one process, 64 requests at a time${sat.read.rounds ? `; the median of ${sat.read.rounds.length} rounds (every round's figure in brackets)` : ''}:`);
      L.push('');
      L.push('| kind | requests/s | Redis share of one core | Redis CPU µs / request |');
      L.push('| --- | ---: | ---: | ---: |');
      for (const [kind, x] of Object.entries(sat)) L.push(`| ${kind} | ${int(x.requestsPerSecond)} | ${(x.redisCoreShare * 100).toFixed(0)}% | ${f1(x.redisCpuMicrosPerRequest)}${x.rounds ? ` (${x.rounds.map(f1).join(', ')})` : ''}${x.failed ? ` (${x.failed} failed)` : ''} |`);
      L.push('');
      for (const [kind, x] of Object.entries(sat)) {
        if (!x.commandsPerRequest) continue;
        const list = Object.entries(x.commandsPerRequest).sort((a, b) => b[1] - a[1]).map(([name, n]) => `${name.toUpperCase()} ${f2(n)}`).join(', ');
        L.push(`Redis commands per ${kind} at the limit (\`INFO commandstats\`, commands inside scripts included): ${list}.`);
      }
      L.push('');
      L.push('Batches and commands per system call grow with the load, so Redis spends less per request at the limit than at the light load of the table above.');
      L.push('');
      const ins = f.instructions;
      if (ins?.read) {
        L.push(`Redis's own work for the same traffic, counted instead of timed (\`bench/saturation.mjs --instructions\`: redis-server under valgrind's callgrind,`);
        L.push(`which counts the instructions it executes, its libraries' included, the kernel's not): ${int(ins.read.instructionsPerRequest)} instructions per raced read, ${int(ins.update.instructionsPerRequest)} per`);
        L.push(`committed update (over ${int(ins.read.requests)} reads and ${int(ins.update.requests)} updates). The count moves by well under 1% from run to run (the batches vary a little) whatever else the host does: compare builds by it.`);
        L.push('');
      }
    }
    const sp = f.spread;
    if (sp) {
      const pct = (x) => `${(x * 100).toFixed(1)}%`;
      L.push(`Redis Cluster of 3 masters (cluster rows above: the same store on an ioredis \`Cluster\` client): ${int(sp.requests)} requests`);
      L.push(`(${sp.failed} failed) alternating reads and updates, 16 clients each taking a new session every 25 requests, in ${f1(sp.seconds)} s:`);
      L.push('');
      L.push('| shard (port) | new keys | commands | CPU µs |');
      L.push('| --- | ---: | ---: | ---: |');
      for (const x of sp.shards) L.push(`| ${x.port} | ${int(x.keys)} | ${int(x.commands)} | ${int(x.cpuMicros)} |`);
      L.push(`| largest deviation from the mean | ${pct(sp.keys.maxDeviation)} | ${pct(sp.commands.maxDeviation)} | ${pct(sp.cpu.maxDeviation)} |`);
      L.push('');
      L.push(`${int(sp.requestTagsChecked)} request hash tags found on the shards, ${sp.requestTagsOnMoreThanOneShard} of them on more than one shard (every script touches one slot; Redis would refuse one that did not).`);
      L.push('');
    }
  }

  const model = capacity(r);
  if (model && model.rows.length) {
    L.push('### Capacity, from this run (the model of docs/operations.md)');
    L.push('');
    L.push(`Redis CPU per request at load for a mix of ${model.mix.map((m) => `${(m.share * 100).toFixed(0)}% ${m.kind}`).join(', ')}: the light-load figures of`);
    L.push(`the table above times the factor measured at the limit (reads ×${f2(model.factor.read)}, updates ×${f2(model.factor.update)}; the kinds with a session as their base kind);`);
    L.push(`cores planned at ${(model.target * 100).toFixed(0)}%. Gateway CPU per request from scenario c (node:http; copies 5 extrapolated).`);
    L.push('');
    L.push('| copies | Redis µs / request of the mix | requests/s per Redis core | gateway µs / request | requests/s per gateway core |');
    L.push('| ---: | ---: | ---: | ---: | ---: |');
    for (const row of model.rows) {
      L.push(`| ${row.copies} | ${f1(row.mixMicros)} | ${int(row.mixPerRedisCore)} | ${row.gatewayMicros == null ? '–' : `${int(row.gatewayMicros)}${row.gatewayExtrapolated ? ' (extrapolated)' : ''}`} | ${row.perGatewayCore == null ? '–' : int(row.perGatewayCore)} |`);
    }
    L.push('');
    if (model.check) {
      const k = model.check;
      L.push(`Checked against the measured point: at the limit Redis carried ${int(k.measuredReadsPerSecond)} reads/s at ${(k.redisCoreShare * 100).toFixed(0)}% of a core`);
      L.push(`(${f1(k.redisMicrosPerReadAtLimit)} µs a read); the light-load figure predicts ${int(k.predictedFromLightLoad)} reads/s for that share, so the model is`);
      L.push(`${k.predictedFromLightLoad <= k.measuredReadsPerSecond ? 'conservative by' : 'optimistic by'} ${f2(Math.max(k.measuredReadsPerSecond, k.predictedFromLightLoad) / Math.min(k.measuredReadsPerSecond, k.predictedFromLightLoad))}× (batches grow with the load).`);
      L.push('');
    }
    const c = model.cluster;
    if (c) {
      const cs = c.saturation;
      L.push(`On Redis Cluster (3 masters, copies 3) every record, claim and confirm is its own script call (one slot per script, no batches across`);
      L.push(`requests). At the limit the 3 shards together spent ${f1(cs.read.redisCpuMicrosPerRequest)} µs per read (${int(cs.read.requestsPerSecond)} reads/s) and ${f1(cs.update.redisCpuMicrosPerRequest)} µs per update`);
      L.push(`(${int(cs.update.requestsPerSecond)} updates/s): factors ×${f2(c.factor.read)} and ×${f2(c.factor.update)} on the cluster rows above, ${f1(c.mixMicros)} µs per request of the mix,`);
      L.push(`${int(c.mixPerRedisCore)} requests/s per shard core at ${(model.target * 100).toFixed(0)}%.`);
      L.push('');
    }
    const p = plan(model);
    if (p) {
      L.push(`The plan of docs/operations.md with these figures${p.basis === 'cluster' ? ' (the Cluster ones)' : ''}: ${int(p.rate)} requests/s of the mix over ${p.gateways} gateways at copies ${p.copies}: ${f1(p.storeMicros)} µs of Redis per request, ${f1(p.redisCores)} Redis cores`);
      L.push(`(${p.shards} Cluster shards at ${(model.target * 100).toFixed(0)}%), ${int(p.perGateway)} requests/s and ${p.gatewayCores == null ? '–' : f1(p.gatewayCores)} cores per gateway, ${int(p.copiesPerSecond)} copies/s on the replicas.`);
      L.push('');
    }
  }

  const e = r.scenarios.e;
  if (e) {
    L.push('## e. Memory and sockets over a long run');
    L.push('');
    L.push(`${e.requests.toLocaleString('en-US')} requests (${e.truncated ? 'cut short by the time limit' : 'all of them'}) through \`redundantProxy\` on node:http racing three fast upstreams (3 copies at once, default`);
    L.push(`in-memory store of ${'10,000'} requests), ${e.config.concurrency} in flight, ${(e.config.slowShare * 100).toFixed(0)}% of upstream answers delayed ${e.config.slowMinMs}–${e.config.slowMaxMs} ms so that some losers are drained`);
    L.push(`and some stopped. The gateway runs with \`--expose-gc\`; each probe runs \`gc()\` first. ${int(e.rps)} req/s, ${e.errors} errors, ${e.non2xx} non-2xx;`);
    L.push(`copies: ${Object.entries(e.gateway.copyOutcomes).filter(([, v]) => v).map(([k, v]) => `${k} ${int(v)}`).join(', ')}; ${f2(e.newUpstreamConnectionsPerRequest)} new upstream connections per request.`);
    L.push('');
    L.push('| probe | requests | heap used MB | rss MB | client sockets | upstream sockets | timers |');
    L.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const cp of e.checkpoints) L.push(`| ${cp.label} | ${int(cp.requestsDone)} | ${f1(cp.heapUsedMB)} | ${int(cp.rssMB)} | ${cp.sockets.client} | ${cp.sockets.upstream ?? cp.sockets.openAtUpstreams} | ${cp.timeouts} |`);
    L.push('');
    L.push(`Heap growth from the warm-up to the end: ${e.heap.growthMB >= 0 ? '+' : ''}${f1(e.heap.growthMB)} MB (target: within ${e.heap.targetMB} MB); from the first quarter, once the store holds`);
    L.push(`its 10,000 records, to the end: ${e.heap.growthAfterFirstQuarterMB >= 0 ? '+' : ''}${f1(e.heap.growthAfterFirstQuarterMB)} MB. Upstream sockets stay within the pools (at most ${e.sockets.poolBound}) while the client is connected`);
    L.push(`and are ${e.sockets.leftAfterKeepAlive} once their keep-alive expired; client sockets left after the client closed: ${e.sockets.clientSocketsLeaked}.`);
    L.push('');
  }

  L.push('## Method');
  L.push('');
  L.push('- `bench/upstream.js` and `bench/gateway.js` run as `child_process.fork` children; the load generators (autocannon, the open-loop');
  L.push('  generator on an undici `Pool`) run in the parent. Only one gateway process is alive at a time.');
  L.push('- The gateways load a copy of `dist/` taken when the run starts (`bench/results/dist-*.tmp`, removed at the end), so that a');
  L.push('  rebuild during a run cannot mix two versions of the library; its commit and hash are in the table at the top.');
  L.push('- The library is used with its defaults plus the options shown (in a, b, c and e: in-memory store, sessions on, no secret; d as described there).');
  L.push('- A race is reported (`race:end`, `metrics()`) once its losers are settled, up to 10 ms after its answer: counters are read 50 ms after the load ends.');
  L.push('- `node bench/run.js --only=b --contestants=racing,ref-drain` runs some contestants only (a partial run, docs untouched); `--prof` writes V8 CPU profiles of the gateways to /tmp.');
  L.push('- d, e and f are `bench/bookkeeping.js`, `bench/memory.js` and `bench/store-cost.js`; each also runs alone (`node bench/memory.js [--quick]`) and prints its results as JSON.');
  L.push('- `bench/model.js` holds the latency model and its PRNG (mulberry32); the ideal is the same streams simulated without any proxy.');
  L.push('- Raw per-request latencies of scenario b and every round of a and c are in `bench/results/latest.json`.');
  L.push('');
  const notes = new URL('./notes.md', import.meta.url);
  if (existsSync(notes)) {
    L.push('## Findings');
    L.push('');
    L.push(readFileSync(notes, 'utf8').trim());
    L.push('');
  }
  return `${L.join('\n')}\n`;
}

export function writeReport(results) {
  const written = [];
  if (results.scenarios.b) {
    const svg = new URL('latency-cdf.svg', docs);
    writeFileSync(svg, cdfSvg(results.scenarios.b));
    written.push(fileURLToPath(svg));
  }
  const md = new URL('benchmarks.md', docs);
  writeFileSync(md, markdown(results));
  written.push(fileURLToPath(md));
  return written;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const file = process.argv[2] ?? fileURLToPath(new URL('./results/latest.json', import.meta.url));
  for (const f of writeReport(JSON.parse(readFileSync(file, 'utf8')))) console.log(`wrote ${f}`);
}
