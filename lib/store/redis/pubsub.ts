// Types only: the main entry of the package must load without ioredis.
import type { Cluster, Redis, RedisOptions } from 'ioredis';

// The Redis store's own connection for pub/sub (a connection in subscriber
// mode can run nothing else), opened at the first wait. Waiters for a claim
// are woken through it the moment the holder confirms or releases: on a
// single Redis through the store's inbox (one channel for the store's life),
// on Cluster through the request's own sharded channel. It queues
// commands while Redis is down and resubscribes by itself when it reconnects
// (ioredis' `autoResubscribe`); `onReady` then lets every waiter look again,
// since messages published meanwhile are lost.

/** The parts of an ioredis `Redis` or `Cluster` duplicate in subscriber mode that the store uses. */
interface Subscriber {
  status: string;
  on(event: string, listener: (...args: never[]) => void): unknown;
  once(event: string, listener: () => void): unknown;
  subscribe(channel: string): Promise<unknown>;
  unsubscribe(channel: string): Promise<unknown>;
  ssubscribe(channel: string): Promise<unknown>;
  sunsubscribe(channel: string): Promise<unknown>;
  disconnect(): void;
}

export class PubSub {
  readonly #source: Redis | Cluster;
  readonly #cluster: boolean;
  readonly #onMessage: (channel: string, message: string) => void;
  readonly #onReady: () => void;
  #subscriber: Subscriber | undefined;
  /** Sharded pub/sub (Redis 7+) or classic; found out at the first subscription. */
  #sharded: boolean | undefined;

  constructor(source: Redis | Cluster, cluster: boolean, onMessage: (channel: string, message: string) => void, onReady: () => void) {
    this.#source = source;
    this.#cluster = cluster;
    this.#onMessage = onMessage;
    this.#onReady = onReady;
  }

  async subscribe(channel: string): Promise<void> {
    const subscriber = (this.#subscriber ??= this.#open());
    if (this.#sharded !== false) {
      try {
        await subscriber.ssubscribe(channel);
        this.#sharded = true;
        return;
      } catch (err) {
        // Redis before 7 has no sharded pub/sub; the scripts publish classically there too.
        if (this.#sharded === true || !/unknown command/i.test(String(err))) throw err;
        this.#sharded = false;
      }
    }
    await subscriber.subscribe(channel);
  }

  /**
   * Subscribes (classic pub/sub) to this store's own inbox on a single Redis:
   * once, for the store's life; ioredis subscribes again after a reconnect.
   */
  async listen(channel: string): Promise<void> {
    await (this.#subscriber ??= this.#open()).subscribe(channel);
  }

  unsubscribe(channel: string): void {
    const subscriber = this.#subscriber;
    if (!subscriber || this.#sharded === undefined) return;
    (this.#sharded ? subscriber.sunsubscribe(channel) : subscriber.unsubscribe(channel)).catch(() => undefined);
  }

  /** Closes the connection, if it was opened (waiting at most 1 s for its end). */
  async close(): Promise<void> {
    const subscriber = this.#subscriber;
    this.#subscriber = undefined;
    if (!subscriber) return;
    // Between reconnects (Redis down) there is no socket to wait for: ioredis
    // just cancels the next attempt and reports no end.
    if (!['connecting', 'connect', 'ready'].includes(subscriber.status)) {
      subscriber.disconnect();
      return;
    }
    await new Promise<void>((resolve) => {
      // Do not wait for a report of the end forever.
      const timer = setTimeout(resolve, 1000);
      timer.unref();
      subscriber.once('end', () => {
        clearTimeout(timer);
        resolve();
      });
      subscriber.disconnect();
    });
  }

  #open(): Subscriber {
    // Whatever the caller's client does while Redis is down, this connection
    // keeps its subscriptions queued and retries them: no caller waits on it.
    const source = this.#source;
    const subscriber = (this.#cluster
      // Sharded pub/sub on Cluster needs a subscriber per shard (ioredis >= 5.6).
      ? (source as Cluster).duplicate([], { enableOfflineQueue: true, lazyConnect: false, shardedSubscribers: true })
      // `disconnectTimeout` (in ioredis' defaults, not in its types): closing
      // while Redis is down keeps a timer of that length on the dead socket.
      : (source as Redis).duplicate({ enableOfflineQueue: true, lazyConnect: false, autoResubscribe: true, maxRetriesPerRequest: null, disconnectTimeout: 100 } as RedisOptions)) as unknown as Subscriber;
    // Errors reach the callers through their commands; an 'error' event
    // without a listener would crash the process.
    subscriber.on('error', () => undefined);
    const onMessage = (channel: string, message: string) => this.#onMessage(channel, message);
    subscriber.on('message', onMessage);
    subscriber.on('smessage', onMessage);
    subscriber.on('ready', this.#onReady);
    subscriber.on('subscribersReady', this.#onReady);
    return subscriber;
  }
}
