import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from '@jest/globals';

// Every relative link in README.md and docs/ points at a file that is there,
// and inside what the package ships (package.json `files`): a reader of the
// installed package must not meet a dead link.

const root = fileURLToPath(new URL('..', import.meta.url));
const shipped = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { files: string[] }).files;
const pages = ['README.md', ...readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

describe('documentation links', () => {
  it.each(pages)('%s: every relative link resolves inside the package', (page) => {
    const text = readFileSync(join(root, page), 'utf8');
    const bad: string[] = [];
    for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = m[1]!;
      if (/^[a-z]+:/i.test(target) || target.startsWith('#')) continue;
      const file = resolve(root, dirname(page), target.split('#')[0]!);
      const rel = relative(root, file);
      const inPackage = shipped.some((f) => rel === f || rel.startsWith(`${f}/`));
      if (!existsSync(file) || !inPackage) bad.push(target);
    }
    expect(bad).toEqual([]);
  });
});

// docs/design.md hands the layout to a reader: one line per file of lib/.
// A file added without its line (or a line left for a file gone) fails here.
describe('the folder tree of docs/design.md', () => {
  /** The tree's paths, rebuilt from its indentation (two spaces a level). */
  function treePaths(): string[] {
    const design = readFileSync(join(root, 'docs', 'design.md'), 'utf8');
    const block = /## The files\s+```\n([\s\S]*?)```/.exec(design)?.[1] ?? '';
    const stack: string[] = [];
    const paths: string[] = [];
    for (const line of block.split('\n')) {
      const m = /^( *)(\S+)/.exec(line);
      if (!m) continue;
      const depth = m[1]!.length / 2;
      stack.length = depth;
      const name = m[2]!;
      if (name.endsWith('/')) stack.push(name.slice(0, -1));
      else paths.push([...stack, name].join('/'));
    }
    return paths;
  }

  function libFiles(dir = join(root, 'lib')): string[] {
    return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? libFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [relative(root, join(dir, e.name))] : []));
  }

  it('lists every file of lib/, and no file that is not there', () => {
    const listed = treePaths().sort();
    const files = libFiles().sort();
    expect(files.filter((f) => !listed.includes(f))).toEqual([]);
    expect(listed.filter((f) => !files.includes(f))).toEqual([]);
  });
});
