import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from '@jest/globals';
import ts from 'typescript';

// The package's types as a TypeScript project that installed it finds them,
// whatever its module resolution: `exports` for node16, nodenext and bundler;
// `types` and `typesVersions` for the older node10 (CommonJS projects), which
// reads no `exports` and found no types for `redundant-proxy/redis` and
// `/testing` before. Against the built dist/*.d.ts (npm test builds first).

const root = fileURLToPath(new URL('../..', import.meta.url));

function diagnostics(moduleResolution: ts.ModuleResolutionKind, module: ts.ModuleKind, file: string): string[] {
  const dir = mkdtempSync(join(tmpdir(), 'rp-types-'));
  try {
    mkdirSync(join(dir, 'node_modules'));
    symlinkSync(root, join(dir, 'node_modules', 'redundant-proxy'));
    const source = join(dir, file);
    writeFileSync(
      source,
      [
        "import { redundantProxy, type RedundantHandle } from 'redundant-proxy';",
        "import { RedisSessionStore } from 'redundant-proxy/redis';",
        "import { testSessionStore } from 'redundant-proxy/testing';",
        'export const used: [typeof redundantProxy, typeof RedisSessionStore, typeof testSessionStore] = [redundantProxy, RedisSessionStore, testSessionStore];',
        "export const id = (h: RedundantHandle): string => h.requestId;",
      ].join('\n'),
    );
    const program = ts.createProgram([source], { moduleResolution, module, target: ts.ScriptTarget.ES2022, strict: true, noEmit: true, skipLibCheck: true, types: ['node'], typeRoots: [join(root, 'node_modules/@types')] });
    return ts.getPreEmitDiagnostics(program).map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('the package’s types in a project that installed it', () => {
  it.each([
    ['node10 (CommonJS)', ts.ModuleResolutionKind.Node10, ts.ModuleKind.CommonJS, 'app.ts'],
    ['node16 (ESM)', ts.ModuleResolutionKind.Node16, ts.ModuleKind.Node16, 'app.mts'],
    ['nodenext (CommonJS, require of ESM)', ts.ModuleResolutionKind.NodeNext, ts.ModuleKind.NodeNext, 'app.cts'],
    ['bundler', ts.ModuleResolutionKind.Bundler, ts.ModuleKind.ESNext, 'app.ts'],
  ])('resolve every entry under %s', (_name, resolution, module, file) => {
    expect(diagnostics(resolution, module, file)).toEqual([]);
  }, 60_000);
});
