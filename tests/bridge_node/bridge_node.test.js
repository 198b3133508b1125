// A Node NATS client (npm `nats`, pinned in package-lock.json) talking to a C++ bus service
// through busd's NATS bridge: a real nats-server (Debian's), a real busd bridged to it, and the
// C++ `bus serve` answering on the bus.
//
//   BUSD, BUS_CLI   the programs (ctest passes them)
//
// Every process started here is stopped however the test ends: after(), and a process 'exit'
// handler for a crash or a Ctrl-C.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { connect, StringCodec, headers } = require('nats');
const { need, track, killAll, until, freePort } = require('../support/processes');

const BUSD = need('BUSD');
const BUS_CLI = need('BUS_CLI');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bus-bridge-node-'));
const endpoint = `unix://${tmp}/busd.sock`;
const sc = StringCodec();

let natsUrl;
let nc;

before(async () => {
  const port = await freePort();
  natsUrl = `nats://127.0.0.1:${port}`;
  track(spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-l', `${tmp}/nats.log`],
    { stdio: 'ignore' }));
  nc = await until('nats-server', async () => {
    try { return await connect({ servers: natsUrl, reconnect: false }); } catch { return null; }
  }, 20000);
  fs.writeFileSync(`${tmp}/busd.toml`, [
    '[[bridge.nats]]',
    'name = "node"',
    `servers = ["${natsUrl}"]`,
    'export = ["calc.>", "ticks.>"]',
    'import = ["node.>"]',
  ].join('\n') + '\n');
  track(spawn(BUSD, ['-e', endpoint, '-c', `${tmp}/busd.toml`], { stdio: 'inherit' }));
  await until('busd', () => fs.existsSync(`${tmp}/busd.sock`), 20000);
  // The C++ service: bus serve, which echoes each request.
  track(spawn(BUS_CLI, ['-e', endpoint, 'serve', '--quiet', 'calc.echo'], { stdio: 'inherit' }));
});

after(async () => {
  if (nc) await nc.close();
  killAll();
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('a Node NATS requester is answered by a C++ bus service through the bridge', async () => {
  // The bridge serves calc.echo on NATS once busd has a local instance of it.
  const reply = await until('calc.echo on NATS', async () => {
    try { return await nc.request('calc.echo', sc.encode('from node'), { timeout: 2000 }); } catch {
      return null;
    }
  }, 20000);
  assert.equal(sc.decode(reply.data), 'from node');
  // Nobody serves calc.nothing: NATS's no-responders, at once.
  await assert.rejects(nc.request('calc.nothing', sc.encode('x'), { timeout: 5000 }),
    (e) => e.code === '503');
});

test('a C++ publish reaches a Node subscriber', async () => {
  const sub = nc.subscribe('ticks.>', { max: 1 });
  await nc.flush();
  const pub = setInterval(() => {
    track(spawn(BUS_CLI, ['-e', endpoint, 'pub', 'ticks.one', 'tick'], { stdio: 'ignore' }));
  }, 200);
  try {
    for await (const m of sub) {
      assert.equal(m.subject, 'ticks.one');
      assert.equal(sc.decode(m.data), 'tick');
      break;
    }
  } finally {
    clearInterval(pub);
  }
});

test('a Node publish reaches a C++ subscriber', async () => {
  const got = [];
  const sub = track(spawn(BUS_CLI, ['-e', endpoint, 'sub', '-n', '1', 'node.>'],
    { stdio: ['ignore', 'pipe', 'inherit'] }));
  sub.stdout.on('data', (d) => got.push(d.toString()));
  const done = new Promise((r) => sub.on('exit', r));
  const h = headers();
  h.set('x-from', 'node');
  const pub = setInterval(() => nc.publish('node.hello', sc.encode('hi from node'), { headers: h }),
    200);
  try {
    await done;
  } finally {
    clearInterval(pub);
  }
  assert.match(got.join(''), /hi from node/);
});
