// Runs the test files in the order the mutation runner gives ($RP_MUTATION_ORDER,
// comma-separated path endings): the fastest killers first, so that --bail
// stops a killed mutant early.
const Sequencer = require('@jest/test-sequencer').default;

class KeepOrder extends Sequencer {
  sort(tests) {
    const order = (process.env.RP_MUTATION_ORDER || '').split(',').filter(Boolean);
    const rank = (t) => {
      const i = order.findIndex((o) => t.path.endsWith(o));
      return i === -1 ? order.length : i;
    };
    return [...tests].sort((a, b) => rank(a) - rank(b));
  }
}

module.exports = KeepOrder;
