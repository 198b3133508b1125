// What the JavaScript tests that run real processes share (tests/dashboard, clients/node/test,
// tests/bridge_node, tests/interop, tests/languages):
// the programs ctest names in the environment, processes tracked so that every one is killed
// however the test ends (a process 'exit' handler, and SIGINT/SIGTERM), running a command for
// its output, and waiting for a condition.
'use strict';

const { execFile } = require('node:child_process');
const net = require('node:net');
const path = require('node:path');

// The environment variable `name`, which ctest sets (tests/CMakeLists.txt).
function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (ctest sets it; see tests/CMakeLists.txt)`);
  return v;
}

const children = new Set(); // every process started, to kill whatever happens
function track(child) {
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}
function killAll() {
  for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { killAll(); process.exit(130); });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls `fn` until it returns something truthy; throws naming `what` (and the last result or
// error) after `timeoutMs`.
async function until(what, fn, timeoutMs = 5000, everyMs = 50) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try { last = await fn(); if (last) return last; } catch (x) { last = x; }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last})`);
    await sleep(everyMs);
  }
}

// `file ARGS...`: resolves with stdout; rejects with an Error carrying exitCode, stdout, stderr.
function run(file, args, { env = process.env, timeout = 10000, cwd } = {}) {
  return new Promise((resolve, reject) => {
    const child = track(execFile(file, args, { env, timeout, cwd }, (err, stdout, stderr) => {
      if (err) {
        reject(Object.assign(new Error(`${path.basename(file)} ${args.join(' ')}: ${err.message}\n${stderr}`),
          { exitCode: err.code, stdout, stderr }));
      } else resolve(stdout);
    }));
    child.stdin && child.stdin.end();
  });
}

// A free loopback TCP port: the kernel's pick, released for the server a test starts.
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

module.exports = { need, track, killAll, sleep, until, run, freePort };
