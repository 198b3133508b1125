// What the tests share: a real busd in a private runtime directory, the `bus` CLI and the C++
// test program as subprocesses. Every process started here is killed however the test ends
// (dispose() in after(), and tests/support/processes.js's 'exit' handler for a crash).
//
//   BUSD, BUS_CLI             the programs (ctest passes them; see tests/CMakeLists.txt)
//   CLI_TEST_PUBLISHER        the C++ program built with testonly.v1.Reading
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
// Shared with the repository's other JavaScript tests: these tests run from a checkout.
const { need, track, sleep, until, run } = require('../../../tests/support/processes');

const BUSD = need('BUSD');
const BUS_CLI = need('BUS_CLI');
const CLI_TEST_PUBLISHER = need('CLI_TEST_PUBLISHER');

// A busd of its own: runtime directory, socket and environment (BUS_ENDPOINT unset, so the
// client's default endpoint is tested too).
class Busd {
  constructor() {
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bus-node-client-'));
    this.runtimeDir = path.join(this.tmp, 'run');
    fs.mkdirSync(path.join(this.runtimeDir, 'bus'), { mode: 0o700, recursive: true });
    this.env = { ...process.env, XDG_RUNTIME_DIR: this.runtimeDir, NO_COLOR: '1' };
    delete this.env.BUS_ENDPOINT;
    this.endpoint = `unix://${path.join(this.runtimeDir, 'bus', 'busd.sock')}`;
    this.child = null;
  }

  async start(extraArgs = []) {
    let log = '';
    const child = track(spawn(BUSD, ['-e', this.endpoint, ...extraArgs],
      { env: this.env, stdio: ['ignore', 'ignore', 'pipe'] }));
    this.child = child;
    child.stderr.setEncoding('utf8');
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('busd did not start in 10 s:\n' + log)), 10000);
      child.stderr.on('data', (d) => {
        log += d;
        if (/busd: serving/.test(log)) { clearTimeout(timer); resolve(); }
      });
      child.on('exit', (code, sig) => { clearTimeout(timer); reject(new Error(`busd exited (${code ?? sig}):\n${log}`)); });
    });
    child.stderr.resume();
    return this;
  }

  kill9() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    return exited;
  }

  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }

  // Stops busd and removes its directory.
  async dispose() {
    await this.stop();
    fs.rmSync(this.tmp, { recursive: true, force: true });
  }

  // `bus ARGS...` against this busd: resolves with stdout, rejects with the exit code and stderr.
  bus(args, { timeout = 10000 } = {}) {
    return run(BUS_CLI, args, { env: this.env, timeout });
  }

  busBackground(args) {
    return background(BUS_CLI, args, this.env);
  }

  // The C++ test program: `pub SUBJECT COUNT`, `serve|mute|die SERVICE`.
  cpp(args) {
    return background(CLI_TEST_PUBLISHER, [this.endpoint, ...args], this.env);
  }
}

// A process whose output is collected: `.out` so far, `.exited` a promise of its exit code.
function background(file, args, env) {
  const child = track(spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] }));
  child.out = '';
  child.err = '';
  child.stdout.setEncoding('utf8').on('data', (d) => { child.out += d; });
  child.stderr.setEncoding('utf8').on('data', (d) => { child.err += d; });
  child.exited = new Promise((r) => child.on('exit', (code, sig) => r(code ?? sig)));
  return child;
}

module.exports = { Busd, until, sleep };
