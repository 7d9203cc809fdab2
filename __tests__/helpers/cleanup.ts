import { afterEach } from '@jest/globals';

export interface Closable {
  close(): Promise<unknown>;
}

/**
 * What a test opens (servers, proxies, stores, pools), closed after each test
 * in the reverse order, so jest exits by itself.
 */
export function closeAfterEach(): { push(...items: Closable[]): void } {
  let open: Closable[] = [];
  afterEach(async () => {
    const items = open.reverse();
    open = [];
    for (const item of items) await item.close();
  });
  return { push: (...items) => void open.push(...items) };
}
