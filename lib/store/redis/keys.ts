// The Redis store's key layout. Every key of one request carries the hash tag `{r:<requestId>}`,
// every key of one session `{s:<sessionId>}`, so each script below touches
// keys of a single slot and runs unchanged on Redis Cluster:
//
//   <prefix>{r:<requestId>}                  hash: the request record — copies,
//                                            adoption, cancellations, commit state
//   <prefix>{r:<requestId>}:commit           sharded channel (Cluster): 'committed|<holder>', 'released'
//   <prefix>inbox:<token>                    channel of one store process (single Redis):
//                                            '["committed", requestId, holder]', '["released", requestId]'
//   <prefix>{s:<sessionId>}                  hash: the session's adopted state
//   <prefix>{s:<sessionId>}:adopt:<reqId>    hash: which copy of that request was
//                                            adopted (w) and whether it was promoted (p)
//   <prefix>{s:<sessionId>}:cand:<reqId>     hash: candidates of that request, by copy id
//   <prefix>{i:<idempotency key>}            hash: an Idempotency-Key's state, kept its TTL
//   <prefix>fence                            string: the fencing token counter (no TTL)
//

/**
 * An id as it goes inside a hash tag: `{` and `}` would end the tag early
 * (splitting one request's keys over slots), so they are escaped, and `%`
 * with them to keep the mapping one-to-one.
 */
export function tag(id: string): string {
  return id.replace(/[%{}]/g, (c) => encodeURIComponent(c));
}

/** The names of one store's keys and channels, under its prefix. */
export class RedisKeys {
  constructor(readonly prefix: string) {}

  request(requestId: string): string {
    return `${this.prefix}{r:${tag(requestId)}}`;
  }

  channel(requestId: string): string {
    return `${this.request(requestId)}:commit`;
  }

  /** A store's inbox channel (single Redis); with '' the prefix every inbox shares. */
  inbox(token: string): string {
    return `${this.prefix}inbox:${token}`;
  }

  session(sessionId: string): string {
    return `${this.prefix}{s:${tag(sessionId)}}`;
  }

  /** The session, the request's adoption marker under the session's tag, and its candidates. */
  sessionKeys(sessionId: string, requestId: string): string[] {
    const session = this.session(sessionId);
    return [session, `${session}:adopt:${requestId}`, `${session}:cand:${requestId}`];
  }

  idempotency(key: string): string {
    return `${this.prefix}{i:${tag(key)}}`;
  }

  fence(): string {
    return `${this.prefix}fence`;
  }
}
