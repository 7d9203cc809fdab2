// The `redundant-proxy/testing` entry: the conformance suite of
// `SessionStore`, whole (`testSessionStore`) or one role at a time
// (`conformance.requestLog`, …). Its parts live in lib/testing/.
export { conformance, testSessionStore } from './testing/conformance.js';
export type { CommitArbitration } from './testing/commit-arbitration.js';
export type { TestSessionStoreOptions } from './testing/harness.js';
