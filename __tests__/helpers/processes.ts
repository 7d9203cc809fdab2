import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

// Gateways and replicas in processes of their own (the fixtures in
// __tests__/fixtures run the built package from dist/), so a test can kill,
// stop and continue them as an operator or a crash would.

export interface Message {
  type: string;
  [key: string]: unknown;
}

export interface Child {
  readonly proc: ChildProcess;
  readonly url: string;
  readonly messages: Message[];
  /** Resolves with the first message (seen before or after the call) that matches. */
  waitFor(match: (m: Message) => boolean, ms?: number): Promise<Message>;
  send(m: Message): void;
  signal(sig: NodeJS.Signals): void;
  readonly alive: boolean;
  /** What it wrote to stderr so far. */
  stderr(): string;
  /** Asks it to close, then kills it if it has not exited within 3 s. */
  close(): Promise<void>;
}

const fixtures = fileURLToPath(new URL('../fixtures/', import.meta.url));

export async function forkFixture(name: 'gateway' | 'replica', env: Record<string, string>): Promise<Child> {
  const proc = fork(`${fixtures}${name}.mjs`, [], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  let stderr = '';
  proc.stderr?.on('data', (c: Buffer) => void (stderr += c.toString()));
  const messages: Message[] = [];
  const waiters = new Set<{ match: (m: Message) => boolean; resolve: (m: Message) => void }>();
  proc.on('message', (m: Message) => {
    messages.push(m);
    for (const w of waiters) {
      if (w.match(m)) {
        waiters.delete(w);
        w.resolve(m);
      }
    }
  });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const waitFor = (match: (m: Message) => boolean, ms = 10_000) => {
    const seen = messages.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise<Message>((resolve, reject) => {
      const w = { match, resolve: (m: Message) => (clearTimeout(timer), resolve(m)) };
      const fail = (why: string) => {
        clearTimeout(timer);
        waiters.delete(w);
        reject(new Error(`${name} ${env.ID ?? ''}: ${why}; stderr: ${stderr}`));
      };
      const timer = setTimeout(() => fail(`no matching message within ${ms} ms`), ms);
      // A child that exits cannot send it any more: fail now, not after `ms`.
      void exited.then(() => waiters.has(w) && fail('exited before a matching message'));
      waiters.add(w);
    });
  };
  let ready: Message;
  try {
    ready = await waitFor((m) => m.type === 'ready');
  } catch (err) {
    // Never handed to the caller, so nobody else would stop it.
    proc.kill('SIGKILL');
    throw err;
  }
  return {
    proc,
    url: `http://127.0.0.1:${ready.port as number}`,
    messages,
    waitFor,
    send: (m) => void (proc.connected && proc.send(m)),
    signal: (sig) => void proc.kill(sig),
    stderr: () => stderr,
    get alive() {
      return proc.exitCode === null && proc.signalCode === null;
    },
    async close() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGCONT'); // in case a test left it stopped
      if (proc.connected) proc.send({ type: 'close' });
      const timer = setTimeout(() => proc.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    },
  };
}
