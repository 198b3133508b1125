// A Node.js parent and a C++ child: Node's own child_process IPC ('json' serialization) talking
// to bus-echo, which picks the channel up from NODE_CHANNEL_FD, and to json_shape_child, which
// sends one protobuf message. Run by ctest with BUS_ECHO=path/to/bus-echo and
// BUS_JSON_SHAPE_CHILD=path/to/interop_json_shape_child.
'use strict';
const { test } = require('node:test');
const assert = require('node:assert');
const { spawn } = require('node:child_process');
const { once } = require('node:events');
const net = require('node:net');

const echo = process.env.BUS_ECHO;
assert.ok(echo, 'BUS_ECHO must name the bus-echo binary');
const shapeChild = process.env.BUS_JSON_SHAPE_CHILD;
assert.ok(shapeChild, 'BUS_JSON_SHAPE_CHILD must name the interop_json_shape_child binary');

function startChild(path) {
  return spawn(path, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'json' });
}
function startEcho() {
  return startChild(echo);
}

async function stop(child) {
  const exited = once(child, 'exit');
  if (child.connected) child.disconnect();
  const [code, signal] = await exited;
  return { code, signal };
}

async function tcpPair() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const client = net.connect(server.address().port, '127.0.0.1');
  const [serverSide] = await once(server, 'connection');
  await once(client, 'connect').catch(() => {});
  return { server, client, serverSide };
}

test('every message comes back unchanged and in order', async () => {
  const child = startEcho();
  const sent = [{ a: 1 }, 'text with\nnewline, quotes " and unicode ☃', 42, -1.5e300, true, null,
    [1, [2, { x: 'y' }]], { nested: { deep: [1.5, -3, ''] } }];
  for (let i = 0; i < 2000; i++) sent.push({ seq: i, pad: 'x'.repeat(i % 64) });
  const got = [];
  const done = new Promise((resolve) => {
    child.on('message', (m) => { got.push(m); if (got.length === sent.length) resolve(); });
  });
  for (const m of sent) child.send(m);
  await done;
  assert.deepStrictEqual(got, sent);
  assert.deepStrictEqual(await stop(child), { code: 0, signal: null });
});

test('a passed socket reaches the C++ child and comes back usable', async () => {
  const child = startEcho();
  const { server, client, serverSide } = await tcpPair();
  child.send({ take: 'socket' }, serverSide);
  const [msg, handle] = await once(child, 'message');
  assert.deepStrictEqual(msg, { take: 'socket' });
  assert.ok(handle instanceof net.Socket, 'the echoed message carries a net.Socket');
  handle.write('through C++ and back');
  const [data] = await once(client, 'data');
  assert.equal(data.toString(), 'through C++ and back');
  handle.destroy();
  client.destroy();
  server.close();
  assert.deepStrictEqual(await stop(child), { code: 0, signal: null });
});

test('several sockets in a row keep their order and their messages', async () => {
  const child = startEcho();
  const pairs = [];
  for (let i = 0; i < 5; i++) pairs.push(await tcpPair());
  const got = [];
  const done = new Promise((resolve) => {
    child.on('message', (m, h) => { got.push([m, h]); if (got.length === 10) resolve(); });
  });
  pairs.forEach((p, i) => { child.send({ socket: i }, p.serverSide); child.send({ plain: i }); });
  await done;
  for (let i = 0; i < 5; i++) {
    const [m, h] = got[2 * i];
    assert.deepStrictEqual(m, { socket: i });
    h.write(`socket ${i}`);
    const [data] = await once(pairs[i].client, 'data');
    assert.equal(data.toString(), `socket ${i}`);
    assert.deepStrictEqual(got[2 * i + 1][0], { plain: i });
    assert.equal(got[2 * i + 1][1], undefined);
    h.destroy();
    pairs[i].client.destroy();
    pairs[i].server.close();
  }
  assert.deepStrictEqual(await stop(child), { code: 0, signal: null });
});

test('a protobuf message from C++ arrives in the JSON shape the README promises', async () => {
  // README, "Messages as JSON": names as in the .proto, every field (defaults too), enums by
  // name, 64-bit integers as strings, bytes as base64. The same text `bus sub --json` prints.
  const child = startChild(shapeChild);
  const [msg] = await once(child, 'message');
  assert.deepStrictEqual(msg, {
    kind: 'KIND_PUBLISH',
    subject: Buffer.from('orders.new').toString('base64'),
    type_url: '',
    payload: '',
    id: '0',
    correlation_id: '0',
    reply_to: '',
    source: '',
    deadline_unix_ns: '1234567890123456789',
    headers: [],
    fd_count: 0,
    subscription_id: '0',
    monitored_kind: 'KIND_UNSPECIFIED',
  });
  assert.ok(BigInt(msg.deadline_unix_ns) > BigInt(Number.MAX_SAFE_INTEGER), 'exact beyond 2^53');
  assert.deepStrictEqual(await stop(child), { code: 0, signal: null });
});

test('the C++ child exits 0 when Node disconnects', async () => {
  const child = startEcho();
  child.send('hello');
  await once(child, 'message');
  assert.deepStrictEqual(await stop(child), { code: 0, signal: null });
});
