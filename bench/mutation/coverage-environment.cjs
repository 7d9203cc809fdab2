// The jest environment of the mutation runner's first pass (bench/mutation/run.mjs):
// the node environment, plus which mutants each test reached (the
// instrumented code counts them in globalThis.__stryker__, under the test
// named here while it runs; outside any test, such as in a hook or at module
// load, as `static`). When the test file is done, that is appended as one
// JSON line to $RP_MUTATION_COVERAGE.
const { appendFileSync } = require('node:fs');
const { TestEnvironment } = require('jest-environment-node');

/** The name jest's -t matches: the describe blocks and the test, joined by spaces. */
function fullName(test) {
  const names = [];
  for (let block = test; block && block.name !== 'ROOT_DESCRIBE_BLOCK'; block = block.parent) names.unshift(block.name);
  return names.join(' ');
}

class CoverageEnvironment extends TestEnvironment {
  constructor(config, context) {
    super(config, context);
    this.testPath = context.testPath;
  }

  handleTestEvent(event) {
    const ns = (this.global.__stryker__ ??= {});
    if (event.name === 'test_start') ns.currentTestId = fullName(event.test);
    else if (event.name === 'test_done' || event.name === 'test_skip') ns.currentTestId = undefined;
  }

  async teardown() {
    const coverage = (this.global.__stryker__ && this.global.__stryker__.mutantCoverage) || { static: {}, perTest: {} };
    const perTest = {};
    for (const [name, ids] of Object.entries(coverage.perTest || {})) perTest[name] = Object.keys(ids);
    if (process.env.RP_MUTATION_COVERAGE) {
      appendFileSync(process.env.RP_MUTATION_COVERAGE, `${JSON.stringify({ file: this.testPath, static: Object.keys(coverage.static || {}), perTest })}\n`);
    }
    await super.teardown();
  }
}

module.exports = CoverageEnvironment;
