// A Node.js cluster primary with one JavaScript worker and one C++ worker (bus-http-hello,
// whose bus::cluster::Worker speaks Node's cluster protocol when a Node primary starts it):
// both serve the same port under wrk with no error, connections go to both, and
// cluster.disconnect() ends both cleanly. NODE_CLUSTER_SCHED_POLICY picks the primary's
// dispatch (rr: the primary accepts and passes each connection, newconn; none: each worker
// accepts on the shared listening socket); CTest runs this file once with each.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const cluster = require('node:cluster');
const http = require('node:http');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { freePort } = require('../support/processes');

const helloBinary = process.env.BUS_HTTP_HELLO;
const jsWorker = path.join(__dirname, 'node_cluster_worker.js');

// cluster.fork() runs `process.execPath ...execArgv exec ...args`: for a native worker the
// binary takes node's place for the length of the call (docs/cluster.md).
function forkNative(binary, env) {
  const node = process.execPath;
  const settings = { ...cluster.settings };
  cluster.setupPrimary({ exec: '--', execArgv: [], args: [] });
  process.execPath = binary;
  try {
    return cluster.fork(env);
  } finally {
    process.execPath = node;
    cluster.setupPrimary(settings);
  }
}

function get(port) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent: false }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, pid: res.headers['x-pid'], body }));
    });
    req.on('error', reject);
  });
}

function exited(worker) {
  return new Promise((resolve) => {
    if (worker.state === 'dead') return resolve({ code: worker.process.exitCode });
    worker.once('exit', (code, signal) =>
      resolve({ code, signal, afterDisconnect: worker.exitedAfterDisconnect }));
  });
}

function wrk(port, extra) {
  return new Promise((resolve, reject) => {
    execFile('wrk', ['-t1', '-c8', '-d1s', ...extra, `http://127.0.0.1:${port}/`],
      { timeout: 30000 }, (err, stdout) => (err ? reject(err) : resolve(stdout)));
  });
}

cluster.setupPrimary({ exec: jsWorker, execArgv: [], args: [], silent: false });
const workers = [];

test.after(() => {
  for (const w of workers) if (w.state !== 'dead') w.process.kill('SIGKILL');
});

test('a C++ worker serves beside a JavaScript worker of a Node cluster', async (t) => {
  assert.ok(helloBinary, 'BUS_HTTP_HELLO names bus-http-hello');
  const port = await freePort();
  const listening = new Map();
  const bothListening = new Promise((resolve) => {
    cluster.on('listening', (worker, address) => {
      listening.set(worker.id, address);
      if (listening.size === 2) resolve();
    });
  });
  const js = cluster.fork({ PORT: String(port) });
  workers.push(js);
  const cpp = forkNative(helloBinary, { BUS_LISTEN: `tcp://127.0.0.1:${port}` });
  workers.push(cpp);
  await bothListening;
  // The C++ worker's queryServer looked like the JavaScript one's: the same server.
  assert.deepStrictEqual(listening.get(cpp.id),
    { addressType: 4, address: '127.0.0.1', port, fd: undefined });

  await t.test('connections reach both workers', async () => {
    const pids = new Map();
    for (let i = 0; i < 40; i++) {
      const r = await get(port);
      assert.strictEqual(r.status, 200);
      pids.set(r.pid, (pids.get(r.pid) || 0) + 1);
    }
    assert.ok(pids.get(String(js.process.pid)) > 0, `the JS worker served: ${[...pids]}`);
    assert.ok(pids.get(String(cpp.process.pid)) > 0, `the C++ worker served: ${[...pids]}`);
    assert.strictEqual(pids.size, 2);
  });

  for (const [name, extra] of [['keep-alive', []], ['Connection: close', ['-H', 'Connection: close']]]) {
    await t.test(`wrk (${name}) sees no error`, async () => {
      const out = await wrk(port, extra);
      const requests = Number((/(\d+) requests in/.exec(out) || [])[1]);
      assert.ok(requests > 0, out);
      assert.doesNotMatch(out, /Socket errors|Non-2xx/, out);
    });
  }

  await t.test('cluster.disconnect() ends both cleanly', async () => {
    const ends = [exited(js), exited(cpp)];
    await new Promise((resolve) => cluster.disconnect(resolve));
    const [jsEnd, cppEnd] = await Promise.all(ends);
    assert.deepStrictEqual(jsEnd, { code: 0, signal: null, afterDisconnect: true });
    assert.deepStrictEqual(cppEnd, { code: 0, signal: null, afterDisconnect: true });
    await assert.rejects(get(port), /ECONNREFUSED/);
  });
});

test('a C++ worker that has nothing to listen on says so and exits 1', async () => {
  const w = forkNative(helloBinary, {}); // no BUS_LISTEN
  workers.push(w);
  const end = await exited(w);
  assert.strictEqual(end.code, 1);
});
