// What the tests share: a real busd in a private runtime directory, the `bus` CLI and the C++
// test program as subprocesses, and waiting for a condition. Every process started here is
// killed however the test ends (after(), and a process 'exit' handler for a crash).
//
//   BUSD, BUS_CLI             the programs (ctest passes them; see tests/CMakeLists.txt)
//   CLI_TEST_PUBLISHER        the C++ program built with testonly.v1.Reading
//   BUS_TEST_PROTO_DIR        tests/integration/proto (its .proto, for the checks only)
'use strict';

const { spawn, execFile } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (ctest sets it; see tests/CMakeLists.txt)`);
  return v;
}

const BUSD = need('BUSD');
const BUS_CLI = need('BUS_CLI');
const CLI_TEST_PUBLISHER = need('CLI_TEST_PUBLISHER');

const children = new Set();
function track(child) {
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}
function killAll() {
  for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
}
process.on('exit', killAll);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn, timeoutMs = 10000, everyMs = 20) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try { last = await fn(); if (last) return last; } catch (x) { last = x; }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last})`);
    await sleep(everyMs);
  }
}

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

  // `bus ARGS...` against this busd: resolves with stdout, rejects with the exit code and stderr.
  bus(args, { timeout = 10000 } = {}) {
    return run(BUS_CLI, args, this.env, timeout);
  }

  busBackground(args) {
    return background(BUS_CLI, args, this.env);
  }

  // The C++ test program: `pub SUBJECT COUNT`, `serve|mute|die SERVICE`.
  cpp(args) {
    return background(CLI_TEST_PUBLISHER, [this.endpoint, ...args], this.env);
  }
}

function run(file, args, env, timeout) {
  return new Promise((resolve, reject) => {
    const child = track(execFile(file, args, { env, timeout }, (err, stdout, stderr) => {
      if (err) reject(Object.assign(new Error(`${path.basename(file)} ${args.join(' ')}: ${err.message}\n${stderr}`), { exitCode: err.code, stderr, stdout }));
      else resolve(stdout);
    }));
    child.stdin.end();
  });
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

module.exports = { Busd, until, sleep, track, background, killAll };
