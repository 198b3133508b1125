// The three clients on one busd at once (issue 20, "Tested together"): C++ (the `bus` CLI and
// a C++ program built with a type neither other language has a .proto for), Node
// (clients/node, in this process) and Python (clients/python, installed in the python.install
// venv, tests/languages/roles.py as separate processes). Typed messages cross every pair
// through busd's registry, services answer across languages, every client comes back after
// busd is killed -9 and restarted, and a peer that sends a wrong type or closes mid-frame gets
// an error that costs nobody else anything.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { connect } = require('../../clients/node');
const { Busd, until } = require('../../clients/node/test/support');
const { need, track } = require('../support/processes');

const PYTHON = path.join(need('BUS_PYTHON_VENV'), 'bin', 'python');
const ROLES = path.join(__dirname, 'roles.py');
const busd = new Busd();
let node; // this process's client

// A Python role: JSON lines on stdout in `.events`; resolves once it says it is ready.
async function python(...args) {
  const child = track(spawn(PYTHON, [ROLES, ...args], {
    env: { ...busd.env, BUS_ENDPOINT: busd.endpoint, PYTHONDONTWRITEBYTECODE: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  }));
  child.events = [];
  child.err = '';
  let partial = '';
  child.stdout.setEncoding('utf8').on('data', (d) => {
    partial += d;
    const lines = partial.split('\n');
    partial = lines.pop();
    for (const line of lines) child.events.push(JSON.parse(line));
  });
  child.stderr.setEncoding('utf8').on('data', (d) => { child.err += d; });
  await until(`python ${args.join(' ')} ready (stderr: ${child.err})`,
    () => child.events.some((e) => e.ready), 20000);
  return child;
}
const messagesOf = (child) => child.events.filter((e) => e.subject);

// Collects what a Node subscription gets, decoded (or the decoding's error code).
function collect(sub) {
  const got = [];
  (async () => {
    for await (const m of sub) {
      try { got.push({ subject: m.subject, value: await m.decode() }); } catch (e) { got.push({ subject: m.subject, error: e.code }); }
    }
  })();
  return got;
}

before(async () => {
  await busd.start();
  node = await connect({ endpoint: busd.endpoint, name: 'together-node' });
});

after(async () => {
  if (node) await node.close();
  await busd.dispose();
});

test('C++ publishes typed messages; Node and Python decode them, wildcards and queue groups', async () => {
  const nodeAll = collect(node.subscribe('readings.>'));
  const nodeQueue = collect(node.subscribe('readings.*', { queue: 'workers' }));
  await node.flush();
  const pyAll = await python('sub', 'readings.*');
  const pyQueue = await python('sub', 'readings.*', 'workers');
  const cli = busd.busBackground(['sub', '--json', '--count', '20', 'readings.lab']);
  await until('bus sub subscribed', async () =>
    (await node.sys('subscriptions')).subscriptions.some((s) => s.pattern === 'readings.lab'), 10000);

  const publisher = busd.cpp(['pub', 'readings.lab', '20']);
  assert.equal(await publisher.exited, 0, publisher.err);
  await until('20 readings at each wildcard subscriber',
    () => nodeAll.length === 20 && messagesOf(pyAll).length === 20, 10000);
  assert.equal(await cli.exited, 0, cli.err);

  // One value, three decoders: Node's (protobufjs), Python's (protobuf) and the CLI's (C++),
  // none of which had the .proto: each fetched it from busd's registry.
  const fromCli = cli.out.trim().split('\n').map((l) => JSON.parse(l).payload);
  for (let i = 0; i < 20; i++) {
    assert.equal(nodeAll[i].value.seq, i + 1);
    assert.equal(nodeAll[i].value.place.room, 'lab');
    assert.deepEqual(messagesOf(pyAll)[i].value, nodeAll[i].value);
    assert.deepEqual(fromCli[i], nodeAll[i].value);
  }
  assert.equal(messagesOf(pyAll)[0].type, 'testonly.v1.Reading');

  // The queue group spans the languages: each reading went to exactly one of its members.
  await until('20 readings across the queue group',
    () => nodeQueue.length + messagesOf(pyQueue).length === 20, 10000);
  const seqs = [...nodeQueue.map((m) => m.value.seq), ...messagesOf(pyQueue).map((m) => m.value.seq)];
  assert.deepEqual(seqs.sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i + 1));
  assert.ok(nodeQueue.length > 0 && messagesOf(pyQueue).length > 0,
    `both members served: node ${nodeQueue.length}, python ${messagesOf(pyQueue).length}`);
  pyAll.kill();
  pyQueue.kill();
});

test('a Python service answers Node and bus req', async () => {
  const service = await python('serve', 'py.upper');
  const reply = await node.request('py.upper', 'from node', { timeout: 5000 });
  assert.equal(reply.string(), 'py:FROM NODE');
  assert.equal((await busd.bus(['req', 'py.upper', 'from c++'])).trim(), 'py:FROM C++');
  service.kill();
});

test('a Node service is called from C++ with a deadline', async () => {
  const seen = [];
  node.serve('node.echo', (req) => {
    seen.push({ deadline: req.deadline, at: Date.now() });
    return `node:${req.string()}`;
  });
  node.serve('node.slow', () => new Promise((resolve) => setTimeout(() => resolve('late'), 3000)));
  await node.flush();
  assert.equal((await busd.bus(['req', '--timeout', '2s', 'node.echo', 'hi'])).trim(), 'node:hi');
  // The C++ requester's deadline reached the Node service: about 2 s after it was sent.
  const left = seen[0].deadline - seen[0].at;
  assert.ok(left > 1000 && left <= 2000, `deadline ${left} ms ahead`);
  // Past it, the C++ requester gets timeout, whatever the Node service does later.
  const late = await busd.bus(['req', '--timeout', '300ms', 'node.slow']).then(
    () => assert.fail('node.slow answered within 300 ms'), (e) => e);
  assert.match(late.stderr, /timeout/);
  node.unserve('node.slow');
});

test('every client comes back after busd is killed -9 and restarted', async () => {
  const nodeGot = collect(node.subscribe('after.restart'));
  const py = await python('sub', 'after.restart');
  const cli = busd.busBackground(['sub', '--json', 'after.restart']);
  await until('three subscribers of after.restart', async () =>
    (await node.sys('subscriptions')).subscriptions.filter((s) => s.pattern === 'after.restart')
      .length === 3, 10000);

  await busd.kill9();
  await busd.start();
  // Each client reconnects by itself (with backoff) and subscribes again; until all three
  // have, what is published reaches only some: publish until each has had one.
  let n = 0;
  await until('a message after the restart at Node, Python and the CLI', async () => {
    await busd.bus(['pub', 'after.restart', `after ${++n}`]);
    return nodeGot.length > 0 && messagesOf(py).length > 0 && cli.out.includes('after ');
  }, 20000, 200);
  assert.ok(py.events.some((e) => e.event === 'disconnected'), 'Python saw busd go');
  cli.kill();
  py.kill();
});

test('a wrong type and a frame cut short cost only their sender', async () => {
  const nodeGot = collect(node.subscribe('bad.input'));
  const py = await python('sub', 'bad.input');
  // busd (restarted above) knows the type again: what follows is about the payload.
  assert.equal(await busd.cpp(['register']).exited, 0);
  // A raw peer: a publish whose payload is not the type it names, then half a frame, then gone.
  const frame = (subject, typeUrl, payload) => {
    const field = (tag, bytes) => Buffer.concat([Buffer.from([tag, bytes.length]), bytes]);
    const body = Buffer.concat([Buffer.from([0x08, 2]), field(0x12, Buffer.from(subject)),
      field(0x1a, Buffer.from(typeUrl)), field(0x22, payload)]);
    const length = Buffer.alloc(4);
    length.writeUInt32LE(body.length);
    return Buffer.concat([length, body]);
  };
  const socketPath = busd.endpoint.slice('unix://'.length);
  const raw = net.connect(socketPath);
  await new Promise((resolve, reject) => raw.once('connect', resolve).once('error', reject));
  const bad = frame('bad.input', 'type.googleapis.com/testonly.v1.Reading', Buffer.from([0xff, 0xff, 0xff]));
  raw.write(bad);
  raw.end(bad.subarray(0, 7)); // closes mid-frame
  await new Promise((resolve) => raw.once('close', resolve));

  await busd.cpp(['pub', 'bad.input', '1']).exited;
  await until('the wrong type and the good reading at Node and Python',
    () => nodeGot.length === 2 && messagesOf(py).length === 2, 10000);
  assert.deepEqual(nodeGot[0], { subject: 'bad.input', error: 'wrong_type' });
  assert.deepEqual(messagesOf(py)[0], { subject: 'bad.input', error: 'wrong_type' });
  assert.equal(nodeGot[1].value.seq, 1);
  assert.equal(messagesOf(py)[1].value.seq, 1);
  // busd dropped the raw peer, and serves everyone else as before.
  const clients = (await node.sys('clients')).clients;
  assert.ok(!clients.some((c) => Number(c.pid) === process.pid && !c.name),
    `the raw connection is gone: ${JSON.stringify(clients)}`);
  assert.match(await busd.bus(['req', '$sys.stats']), /clients/);
  py.kill();
});
