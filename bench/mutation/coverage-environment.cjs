// The jest environment of the mutation runner's first pass (bench/mutation/run.mjs):
// the node environment, plus, when the test file is done, which mutants its
// tests reached (the instrumented code counts them in globalThis.__stryker__),
// appended as one JSON line to $RP_MUTATION_COVERAGE.
const { appendFileSync } = require('node:fs');
const { TestEnvironment } = require('jest-environment-node');

class CoverageEnvironment extends TestEnvironment {
  constructor(config, context) {
    super(config, context);
    this.testPath = context.testPath;
  }

  async teardown() {
    const coverage = this.global.__stryker__ && this.global.__stryker__.mutantCoverage;
    const ids = coverage ? [...new Set([...Object.keys(coverage.static || {}), ...Object.values(coverage.perTest || {}).flatMap((c) => Object.keys(c))])] : [];
    if (process.env.RP_MUTATION_COVERAGE) appendFileSync(process.env.RP_MUTATION_COVERAGE, `${JSON.stringify({ file: this.testPath, ids })}\n`);
    await super.teardown();
  }
}

module.exports = CoverageEnvironment;
