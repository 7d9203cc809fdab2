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
