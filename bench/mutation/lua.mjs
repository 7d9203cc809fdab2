// The Lua scripts of the Redis store, mutated the way a slip of the pen
// would, one line at a time (Stryker mutates TypeScript; inside a template
// string it could only blank a whole script, which says nothing):
//
//   delete    a statement line (a guard `if … then return … end`, a write, a
//             `return`): does any test notice it is gone?
//   negate    the condition of an `if` (`if c then` → `if not (c) then`)
//   invert    one comparison (`<`↔`>=`, `>`↔`<=`, `==`↔`~=`)
//   boundary  one ordering comparison moved by one (`<`↔`<=`, `>`↔`>=`)
//   logic     one `and`↔`or`
//
// A line that only declares a `local` is not deleted (Lua fails on the next
// use at once, which says nothing). run.mjs runs each mutant against the
// Redis store's tests.

/**
 * The files with Lua in scope, the scripts in each (by the name of the
 * constant that holds it) and the prefix of their mutants' ids: the
 * commit's and idempotency's scripts, and the request log's (RECORD_BATCH,
 * held in `LUA`) and the session reads' in batches.
 */
export const LUA_SOURCES = [
  { file: 'lib/store/redis/scripts.ts', prefix: 'L', scripts: ['CLAIM_ONE', 'CLAIM_BATCH', 'CONFIRM_ONE', 'CONFIRM_BATCH', 'RELEASE', 'BEGIN_IDEMPOTENT', 'COMPLETE_IDEMPOTENT', 'PRELUDE'] },
  { file: 'lib/store/redis/batch.ts', prefix: 'B', scripts: ['LUA', 'SESSIONS_LUA', 'EACH'] },
];
/** The helpers of scripts.ts's PRELUDE that the claim uses. */
const PRELUDE_FUNCTIONS = ['clock', 'next_fence', 'touch', 'wake'];

/** Every mutant of the scripts of one of LUA_SOURCES, given its file's text, each with the whole mutated text. */
export function luaMutants(source, { scripts, prefix }) {
  const lines = source.split('\n');
  const out = [];
  for (const { script, line, text } of scriptLines(lines, scripts)) {
    for (const m of mutantsOf(text)) {
      const mutated = [...lines];
      mutated[line] = m.text;
      out.push({ id: `${prefix}${out.length + 1}`, script, line: line + 1, kind: m.kind, mutator: `Lua ${m.kind}`, from: text.trim(), replacement: m.text.trim(), source: mutated.join('\n') });
    }
  }
  return out;
}

/** Where each script's Lua lines are in the source: [{ script, line (0-based), text }]. */
function scriptLines(lines, scripts) {
  const out = [];
  for (const name of scripts) {
    // `const PRELUDE = \``, `const CLAIM_ONE = \``, `export const RELEASE = script(\``, `export const CLAIM_BATCH = script(CLAIM_ONE + EACH + \``
    const start = lines.findIndex((l) => new RegExp(`^(export )?const ${name} = (script\\((([A-Z_]+) \\+ )*)?\``).test(l));
    if (start === -1) throw new Error(`script ${name} not found`);
    // Its text ends at the closing backtick, or where another constant's text is spliced in (`\` + EACH + \``).
    const end = lines.findIndex((l, i) => i > start && /^`(\)?;$| \+ )/.test(l));
    let fn;
    for (let i = start + 1; i < end; i++) {
      const text = lines[i];
      if (name === 'PRELUDE') {
        const m = /^local function (\w+)/.exec(text);
        if (m) fn = m[1];
        if (!PRELUDE_FUNCTIONS.includes(fn)) continue;
      }
      out.push({ script: name === 'PRELUDE' ? `PRELUDE ${fn}` : name, line: i, text });
    }
  }
  return out;
}

const INVERT = { '<': '>=', '>=': '<', '>': '<=', '<=': '>', '==': '~=', '~=': '==' };
const BOUNDARY = { '<': '<=', '<=': '<', '>': '>=', '>=': '>' };

/** Every mutant of one Lua line. */
function mutantsOf(text) {
  const code = text.replace(/--.*$/, '');
  const trimmed = code.trim();
  if (trimmed === '' || trimmed === 'end' || trimmed === 'else') return [];
  const indent = /^\s*/.exec(text)[0];
  const out = [];
  const opener = /^(local\s+)?function\b/.test(trimmed);
  // delete: any statement that is not a declaration, an opener of a block, or
  // a `local` (whose removal is a Lua error at once, which says nothing).
  const blockOpener = opener || (/^if\b/.test(trimmed) && !/\bend$/.test(trimmed)) || /^(for|while)\b/.test(trimmed);
  if (!blockOpener && !/^local\b/.test(trimmed)) out.push({ kind: 'delete', text: `${indent}-- (deleted) ${trimmed}` });
  // negate the condition of an if (single-line or block)
  const cond = /^(\s*)if (.+?) then\b(.*)$/.exec(code);
  if (cond) out.push({ kind: 'negate', text: `${cond[1]}if not (${cond[2]}) then${cond[3]}` });
  if (opener) return out;
  // comparisons, one occurrence at a time (outside string literals)
  for (const m of code.matchAll(/(~=|==|<=|>=|<|>)/g)) {
    if (inString(code, m.index)) continue;
    const op = m[1];
    out.push({ kind: 'invert', text: splice(text, m.index, op.length, INVERT[op]) });
    if (BOUNDARY[op]) out.push({ kind: 'boundary', text: splice(text, m.index, op.length, BOUNDARY[op]) });
  }
  for (const m of code.matchAll(/\b(and|or)\b/g)) {
    if (inString(code, m.index)) continue;
    out.push({ kind: 'logic', text: splice(text, m.index, m[1].length, m[1] === 'and' ? 'or' : 'and') });
  }
  return out;
}

function splice(s, at, length, by) {
  return s.slice(0, at) + by + s.slice(at + length);
}

function inString(code, at) {
  let quote;
  for (let i = 0; i < at; i++) {
    const c = code[i];
    if (quote) {
      if (c === quote) quote = undefined;
    } else if (c === "'" || c === '"') quote = c;
  }
  return quote !== undefined;
}

