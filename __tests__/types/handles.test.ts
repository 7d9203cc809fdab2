import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from '@jest/globals';
import ts from 'typescript';

// The handle's types as a user of the installed package meets them: the
// project in test-d/handles imports `redundant-proxy` by name, which resolves
// through package.json `exports` to the built dist/*.d.ts (built by `npm
// test` before jest runs). It is kept out of tsconfig.json's `include`: the
// repository's own typecheck sees lib/, and would see both.

const root = fileURLToPath(new URL('../..', import.meta.url));
const project = join(root, 'test-d/handles');
const tsc = join(root, 'node_modules/typescript/bin/tsc');

describe('typed handles: req.redundant (Express) and ctx.state.redundant (Koa)', () => {
  it('an Express and a Koa replica using the handle compile, and every misuse marked @ts-expect-error is an error', async () => {
    const out = await new Promise<{ code: number; text: string }>((resolve) => {
      execFile(process.execPath, [tsc, '-p', join(project, 'tsconfig.json')], { cwd: root, timeout: 60_000 }, (err, stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, text: stdout + stderr }),
      );
    });
    expect(out.text).toBe('');
    expect(out.code).toBe(0);
  }, 60_000);

  it('without its @ts-expect-error directives, misuse.ts fails on exactly those lines, each for its own reason', () => {
    const file = join(project, 'misuse.ts');
    const source = readFileSync(file, 'utf8').split('\n');
    // Each directive names the line after it; blanked, so line numbers stay.
    const expected = new Map<number, string>();
    const stripped = source.map((line, i) => {
      const m = /^\s*\/\/ @ts-expect-error (.*)$/.exec(line);
      if (!m) return line;
      expected.set(i + 2, m[1]!);
      return '';
    });
    expect(expected.size).toBe(5);
    const config = ts.getParsedCommandLineOfConfigFile(join(project, 'tsconfig.json'), {}, { ...ts.sys, onUnRecoverableConfigFileDiagnostic: (d) => { throw new Error(String(d.messageText)); } })!;
    const host = ts.createCompilerHost(config.options);
    const readFile = host.readFile;
    host.readFile = (name) => (name === file ? stripped.join('\n') : readFile.call(host, name));
    const getSourceFile = host.getSourceFile;
    host.getSourceFile = (name, version, onError, create) =>
      name === file ? ts.createSourceFile(name, stripped.join('\n'), version) : getSourceFile.call(host, name, version, onError, create);
    const program = ts.createProgram(config.fileNames, config.options, host);
    const errors = ts.getPreEmitDiagnostics(program).map((d) => ({
      file: d.file?.fileName,
      line: d.file ? d.file.getLineAndCharacterOfPosition(d.start!).line + 1 : 0,
      text: ts.flattenDiagnosticMessageText(d.messageText, '\n'),
    }));
    expect(errors.every((e) => e.file === file)).toBe(true);
    expect(errors.map((e) => e.line).sort((a, b) => a - b)).toEqual([...expected.keys()]);
    const at = (line: number) => errors.find((e) => e.line === line)!.text;
    const [noFn, stringFence, noField, sessionNumber, claimFence] = [...expected.keys()];
    expect(at(noFn!)).toMatch(/Expected 1 arguments, but got 0/);
    expect(at(stringFence!)).toMatch(/Type 'number' is not assignable to type 'string'/);
    expect(at(noField!)).toMatch(/Property 'sessionId' does not exist on type 'RedundantHandle'/);
    expect(at(sessionNumber!)).toMatch(/Type '\{ id: string; data: Record<string, unknown>; \}' is not assignable to type 'number'/);
    expect(at(claimFence!)).toMatch(/Type 'number' is not assignable to type 'string'/);
  }, 60_000);
});
