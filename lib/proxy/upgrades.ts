import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { codes, RedundantProxyError } from '../errors.js';
import type { Emitter } from '../events.js';
import type { Scheduler } from '../time.js';
import { requestTarget } from './admit.js';
import type { Metrics } from './metrics.js';
import type { ResolvedOptions } from './options.js';
import type { Planner } from './planner.js';
import type { ProxyEvents } from './proxy-events.js';
import { tunnel, writeSocketError, type UpgradeOutcome } from './upgrade.js';

// The proxy's side of WebSocket (and any Upgrade) passthrough: which
// upstream an upgrade goes to, its events and metrics, and the tunnels that
// close() ends. The tunnel itself is lib/proxy/upgrade.ts.

export interface UpgradeDeps {
  opts: ResolvedOptions;
  planner: Planner;
  metrics: Metrics;
  events: Emitter<ProxyEvents>;
  time: Scheduler;
  isClosed: () => boolean;
  toInternal: (err: unknown) => RedundantProxyError;
}

export class Upgrades {
  readonly #d: UpgradeDeps;
  /** The client sockets of the upgrades in progress or tunnelled: `end()` ends them. */
  readonly #tunnels = new Set<Duplex>();

  constructor(deps: UpgradeDeps) {
    this.#d = deps;
  }

  /** An upgrade that got no upstream: said on the raw socket, and reported. */
  #refuse(socket: Duplex, requestId: string, path: string | null, error: RedundantProxyError): void {
    writeSocketError(socket, error, requestId);
    this.#d.metrics.upgrades.failed++;
    if (this.#d.events.has('upgrade')) this.#d.events.emit('upgrade', { requestId, path, upstream: null, outcome: 'failed', status: error.status, error });
  }

  /**
   * A WebSocket (or any `Upgrade`): ONE upstream, as a read's first copy
   * would go (rotation, skipping ejected and busy ones), a fresh request id,
   * the client's `x-redundant-*` removed by the tunnel (lib/proxy/upgrade.ts).
   */
  readonly handle = (req: IncomingMessage, socket: Duplex, head: Buffer): void => this.handleAt(req, socket, head, undefined);

  /**
   * An upgrade outside the proxy's mount path that no other listener of the
   * server can take: answered (404) and closed, never left open. Node gives
   * a socket it hands to `upgrade` listeners no timeout: one nobody answers
   * stays open for good, and holds the server's close().
   */
  notMounted(req: IncomingMessage, socket: Duplex, mountPath: string): void {
    this.#refuse(socket, randomUUID(), req.url ?? null, new RedundantProxyError(codes.NOT_MOUNTED, `this upgrade is outside the proxy's mountPath (${mountPath}) and nothing else on this server takes upgrades`, { status: 404 }));
  }

  /** `handle`, with the request's target as a mount took its path off (`url`), the request itself left as it is. */
  handleAt(req: IncomingMessage, socket: Duplex, head: Buffer, url: { url: string; originalUrl: string } | undefined): void {
    const requestId = randomUUID();
    try {
      if (this.#d.isClosed()) return this.#refuse(socket, requestId, null, new RedundantProxyError(codes.CLOSED, 'the proxy is closing', { status: 503 }));
      const path = requestTarget(req, url);
      if (typeof path !== 'string') return this.#refuse(socket, requestId, null, new RedundantProxyError(codes.BAD_TARGET, path.reason, { status: 400 }));
      const targets = this.#d.planner.plan(false);
      if (targets === 'busy') return this.#refuse(socket, requestId, path, new RedundantProxyError(codes.UPSTREAM_BUSY, `every upstream has ${this.#d.opts.maxInFlight} copies in flight (maxInFlight); retry later`, { status: 503 }));
      const upstream = targets[0];
      if (!upstream) return this.#refuse(socket, requestId, path, new RedundantProxyError(codes.NO_UPSTREAM, 'every upstream is ejected for failing; none may receive the request now', { status: 503 }));
      const started = this.#d.time.now();
      let upgraded = false;
      this.#tunnels.add(socket);
      socket.once('close', () => {
        this.#tunnels.delete(socket);
        if (!upgraded) return;
        this.#d.metrics.upgrades.open--;
        if (this.#d.events.has('upgrade:end')) this.#d.events.emit('upgrade:end', { requestId, upstream: upstream.id, duration: this.#d.time.now() - started });
      });
      const onDone = (outcome: UpgradeOutcome) => {
        upgraded = outcome.kind === 'upgraded' && !socket.destroyed;
        if (upgraded) this.#d.metrics.upgrades.open++;
        this.#d.metrics.upgrades[outcome.kind]++;
        if (!this.#d.events.has('upgrade')) return;
        const status = outcome.kind === 'upgraded' ? 101 : outcome.kind === 'refused' ? outcome.status : outcome.error.status;
        this.#d.events.emit('upgrade', { requestId, path, upstream: upstream.id, outcome: outcome.kind, status, ...(outcome.kind === 'failed' ? { error: outcome.error } : {}) });
      };
      tunnel(req, socket, head, { id: upstream.id, label: upstream.label, url: new URL(upstream.origin + (upstream.prefix || '/')) }, { requestId, path, trustForwarded: this.#d.opts.trustForwarded, timeout: this.#d.opts.timeout, tls: upstream.tls, scheduler: this.#d.time, onDone });
    } catch (err) {
      this.#refuse(socket, requestId, null, this.#d.toInternal(err));
    }
  }

  /** Ends the this.#tunnels: at once, or once `tunnelGrace` passed (or they all ended by themselves). */
  async end(): Promise<void> {
    if (this.#tunnels.size === 0) return;
    if (this.#d.opts.tunnelGrace > 0) {
      await new Promise<void>((resolve) => {
        let left = this.#tunnels.size;
        const timer = this.#d.time.setTimeout(resolve, this.#d.opts.tunnelGrace);
        const one = () => {
          if (--left > 0) return;
          this.#d.time.clearTimeout(timer);
          resolve();
        };
        for (const socket of this.#tunnels) socket.once('close', one);
      });
    }
    const ended = [...this.#tunnels].map((socket) => new Promise((resolve) => socket.once('close', resolve)));
    for (const socket of this.#tunnels) socket.destroy();
    await Promise.all(ended);
  }
}
