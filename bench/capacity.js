// The capacity model of docs/operations.md, computed from one benchmark run:
// Redis CPU per request (scenario f, by kind and copies), gateway CPU per
// request (scenario c, copies 1–3 on node:http), and the saturation points
// of scenario f (reads' and updates' store traffic as fast as Redis takes it).
//
//   Redis cores for a rate λ of a mix      = λ × Σ share(kind) × cpu(kind, copies) ÷ (1e6 × target)
//   requests/s one gateway core carries    = 1e6 × target ÷ gateway CPU per request
//
// Redis spends less per request the busier it is (more commands per system
// call, larger batches), so the light-load figures of the cells are an upper
// bound. The model plans with figures at load: for reads and updates the
// saturation points; for the kinds with a session, the light-load figure
// scaled by the same factor as its base kind (read+session as reads, a
// session update as updates).
//
// `target` is the share of a core planned for (0.7: headroom for bursts and
// for the latency that grows near a full core).

export const TARGET = 0.7;

/** A read-heavy mix: the one the plan past one machine uses. */
export const MIX = [
  { kind: 'read', share: 0.45 },
  { kind: 'read+session', share: 0.4 },
  { kind: 'session update', share: 0.05 },
  { kind: 'update', share: 0.1 },
];

/** Gateway CPU µs per request at `copies`, from scenario c (copies 1–3), a straight line beyond. */
export function gatewayCpu(c, copies) {
  const by = Object.fromEntries((c?.contestants ?? []).map((x) => [x.copies, x.cpuMicrosPerRequest]));
  if (by[copies] != null) return { micros: by[copies], extrapolated: false };
  if (by[1] == null || by[3] == null) return null;
  const perCopy = (by[3] - by[1]) / 2;
  return { micros: by[3] + perCopy * (copies - 3), extrapolated: true };
}

/** The model's figures for one run: per copies, Redis µs per request of the mix and what a core carries. */
export function capacity(results) {
  const f = results.scenarios?.f;
  if (!f?.results?.redis) return null;
  const sat = f.saturation ?? null;
  const light3 = f.results.redis[3];
  // Load factor: at-limit µs ÷ light-load µs, for reads and for updates (copies 3, where both were measured).
  const factor = {
    read: sat?.read && light3?.read ? sat.read.redisCpuMicrosPerRequest / light3.read.redisCpuMicrosPerRequest : 1,
    update: sat?.update && light3?.update ? sat.update.redisCpuMicrosPerRequest / light3.update.redisCpuMicrosPerRequest : 1,
  };
  const base = { read: 'read', 'read+session': 'read', 'session update': 'update', update: 'update' };
  const rows = [];
  for (const [copies, cells] of Object.entries(f.results.redis)) {
    const light = (kind) => cells[kind]?.redisCpuMicrosPerRequest ?? null;
    if (MIX.some((m) => light(m.kind) === null)) continue;
    const atLoad = Object.fromEntries(MIX.map((m) => [m.kind, light(m.kind) * factor[base[m.kind]]]));
    const mixMicros = MIX.reduce((a, m) => a + m.share * atLoad[m.kind], 0);
    const gw = gatewayCpu(results.scenarios?.c, Number(copies));
    rows.push({
      copies: Number(copies),
      lightMicros: Object.fromEntries(MIX.map((m) => [m.kind, light(m.kind)])),
      atLoadMicros: atLoad,
      mixMicros,
      mixPerRedisCore: (1e6 * TARGET) / mixMicros,
      gatewayMicros: gw?.micros ?? null,
      gatewayExtrapolated: gw?.extrapolated ?? null,
      perGatewayCore: gw ? (1e6 * TARGET) / gw.micros : null,
    });
  }
  // On Cluster the store cannot batch across requests (one slot per script): its own figures, copies 3.
  let cluster = null;
  const csat = f.clusterSaturation ?? null;
  const lightC = f.results.cluster?.[3];
  if (csat?.read && csat?.update && lightC && MIX.every((m) => lightC[m.kind]?.redisCpuMicrosPerRequest != null)) {
    const cfactor = {
      read: csat.read.redisCpuMicrosPerRequest / lightC.read.redisCpuMicrosPerRequest,
      update: csat.update.redisCpuMicrosPerRequest / lightC.update.redisCpuMicrosPerRequest,
    };
    const atLoad = Object.fromEntries(MIX.map((m) => [m.kind, lightC[m.kind].redisCpuMicrosPerRequest * cfactor[base[m.kind]]]));
    const mixMicros = MIX.reduce((a, m) => a + m.share * atLoad[m.kind], 0);
    cluster = { copies: 3, factor: cfactor, atLoadMicros: atLoad, mixMicros, mixPerRedisCore: (1e6 * TARGET) / mixMicros, saturation: csat };
  }
  return {
    target: TARGET,
    mix: MIX,
    factor,
    rows,
    cluster,
    // The measured point: reads' store traffic at the limit, against what the model's figure for a read predicts.
    check: sat?.read && light3?.read
      ? {
          measuredReadsPerSecond: sat.read.requestsPerSecond,
          redisCoreShare: sat.read.redisCoreShare,
          redisMicrosPerReadAtLimit: sat.read.redisCpuMicrosPerRequest,
          predictedFromLightLoad: (sat.read.redisCoreShare * 1e6) / light3.read.redisCpuMicrosPerRequest,
        }
      : null,
  };
}

/** The plan past one machine: `rate` requests/s of the mix over `gateways` gateways, at `copies`. */
export function plan(model, { rate = 100_000, gateways = 20, copies = 3 } = {}) {
  const row = model?.rows.find((r) => r.copies === copies);
  if (!row) return null;
  // Past one Redis the store runs on Cluster: its per-request figures, when measured.
  const onCluster = model.cluster && model.cluster.copies === copies ? model.cluster : null;
  const storeMicros = onCluster ? onCluster.mixMicros : row.mixMicros;
  const redisCores = (rate * storeMicros) / (1e6 * model.target);
  const perGateway = rate / gateways;
  return {
    rate,
    gateways,
    copies,
    basis: onCluster ? 'cluster' : 'redis',
    storeMicros,
    redisCores,
    shards: Math.ceil(redisCores),
    perGateway,
    gatewayCores: row.gatewayMicros ? (perGateway * row.gatewayMicros) / (1e6 * model.target) : null,
    copiesPerSecond: rate * copies,
  };
}
