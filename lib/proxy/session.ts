import { createHmac, timingSafeEqual } from 'node:crypto';
import { mintSessionId, SESSION_ID } from '../wire/protocol.js';

// Session ids the proxy hands out, and the only ones it takes back. A client
// that picks its own id (or is made to use one an attacker picked) gets a
// fresh one instead: with a `secret`, an id is taken back when it carries the
// proxy's signature (no store round trip); without one, when the store holds
// a session under it.

const MAC_BYTES = 16;
const RANDOM_CHARS = 24; // 18 random bytes, base64url
const SIGNED_LENGTH = RANDOM_CHARS + Math.ceil((MAC_BYTES * 4) / 3);

function mac(secret: string | Buffer, random: string): string {
  return createHmac('sha256', secret).update(`redundant-proxy session\n${random}`).digest().subarray(0, MAC_BYTES).toString('base64url');
}

/** A new session id signed with `secret`: 144 random bits, then 128 bits of HMAC (46 characters of base64url). */
export function mintSignedSessionId(secret: string | Buffer): string {
  const random = mintSessionId();
  return random + mac(secret, random);
}

/** Whether `id` is one that `mintSignedSessionId(secret)` made. */
export function isSignedSessionId(id: string, secret: string | Buffer): boolean {
  if (id.length !== SIGNED_LENGTH || !SESSION_ID.test(id)) return false;
  const expected = Buffer.from(mac(secret, id.slice(0, RANDOM_CHARS)));
  const got = Buffer.from(id.slice(RANDOM_CHARS));
  return got.length === expected.length && timingSafeEqual(got, expected);
}
