// Which mutants are not worth running: the prose of error messages and the
// labels of store operations (they only name the operation in an error
// message). Turning 'the session store is unavailable…' into "" changes what
// a person reads, not what the code decides, and no test should pin a
// sentence; the code, the status and every branch around them are still
// mutated. An Ignorer as Stryker's instrumenter takes it (a babel NodePath in,
// a reason out).

/** Callee name → the argument positions that are only text for a person. */
const PROSE = new Map([
  ['RedundantProxyError', [1]],
  ['InvalidOptionError', [1]],
  ['SupersededError', [0]],
  ['storeFull', [0]],
  ['lostAnswer', [1]],
  ['withTimeout', [2]],
  ['run', [0]], // RedisSessionStore#run(what, …): `what` names the operation in an error message
  ['guard', [0]], // RedisSessionStore#guard(what, …): the same
  ['Error', [0]],
  ['warn', [0]],
]);

function calleeName(node) {
  if (node.type === 'Identifier') return node.name;
  if (node.type === 'MemberExpression') {
    if (node.property.type === 'Identifier') return node.property.name;
    if (node.property.type === 'PrivateName') return node.property.id.name;
  }
  return undefined;
}

export const ignoreMessages = {
  shouldIgnore(path) {
    if (!path.isStringLiteral() && !path.isTemplateLiteral()) return undefined;
    const parent = path.parentPath;
    if (!parent || !(parent.isNewExpression() || parent.isCallExpression()) || path.listKey !== 'arguments') return undefined;
    const positions = PROSE.get(calleeName(parent.node.callee));
    if (positions && positions.includes(path.key)) return 'the text of an error message or an operation label: for a person, not a decision';
    return undefined;
  },
};
