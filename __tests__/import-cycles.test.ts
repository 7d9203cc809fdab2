import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from '@jest/globals';

// No import cycles among the library's files at run time: a cycle means two
// modules each need the other loaded first, so which one sees the other
// half-initialised depends on who imports first (shared code living in the
// wrong file once tied options → prometheus → metrics → ejection → race →
// options together). Type-only imports (`import type`, `export type`) are
// erased from the JavaScript and are not counted.

const LIB = resolve(process.cwd(), 'lib');

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []));
}

/** The library files a file imports or re-exports values from (relative specifiers only). */
export function importsOf(file: string, source = readFileSync(file, 'utf8')): string[] {
  const out: string[] = [];
  for (const m of source.matchAll(/^\s*(import|export)\s+(type\s)?([^'";]*?)\bfrom\s+['"](\.[^'"]+)['"]/gm)) {
    if (m[2]) continue; // `import type …`, `export type …`
    // `import { type A, type B }`: nothing of it is left in the JavaScript.
    const names = /\{([^}]*)\}/.exec(m[3]!)?.[1];
    if (names !== undefined && !/^\s*[*\w]/.test(m[3]!) && names.split(',').every((n) => n.trim() === '' || n.trim().startsWith('type '))) continue;
    out.push(resolve(dirname(file), m[4]!.replace(/\.js$/, '.ts')));
  }
  return out;
}

/** Every cycle found by a depth-first walk, each as the files around it. */
export function cycles(graph: Map<string, string[]>): string[][] {
  const found: string[][] = [];
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (node: string): void => {
    state.set(node, 'open');
    stack.push(node);
    for (const next of graph.get(node) ?? []) {
      if (state.get(next) === 'open') found.push(stack.slice(stack.indexOf(next)).concat(next));
      else if (!state.has(next)) visit(next);
    }
    stack.pop();
    state.set(node, 'done');
  };
  for (const node of graph.keys()) if (!state.has(node)) visit(node);
  return found;
}

describe('the library’s imports', () => {
  it('form no cycle', () => {
    const graph = new Map(files(LIB).map((f) => [f, importsOf(f)]));
    expect(graph.size).toBeGreaterThan(20);
    const named = cycles(graph).map((c) => c.map((f) => relative(LIB, f)).join(' → '));
    expect(named).toEqual([]);
  });

  it('type-only imports are not counted; value imports and re-exports are', () => {
    const source = [
      "import type { A } from './a.js';",
      "import { type B, type C } from './b.js';",
      "export type { D } from './d.js';",
      "import { E, type F } from './e.js';",
      "import G, { type H } from './g.js';",
      "export { I } from './i.js';",
      "import * as J from './j.js';",
    ].join('\n');
    expect(importsOf('/x/file.ts', source).map((f) => relative('/x', f))).toEqual(['e.ts', 'g.ts', 'i.ts', 'j.ts']);
  });

  it('the check finds a cycle when there is one', () => {
    const graph = new Map([
      ['a', ['b']],
      ['b', ['c']],
      ['c', ['a']],
      ['d', ['a']],
    ]);
    expect(cycles(graph)).toEqual([['a', 'b', 'c', 'a']]);
  });
});
