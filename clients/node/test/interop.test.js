// The Node client with the C++ side: the `bus` CLI (pub, sub --json, req, serve) and a C++
// program built with a type Node has no .proto for (testonly.v1.Reading, decoded through busd's
// registry), and a type only Node knows (nodeonly.v1.Order, which `bus` decodes through what
// the Node client registered).
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { connect } = require('..');
const { Busd, until } = require('./support');

const busd = new Busd();
const ORDER_PROTO = path.join(__dirname, 'proto', 'nodeonly', 'v1', 'order.proto');
let bus;

const order = {
  id: '9007199254740993', // above 2^53: 64-bit integers travel as strings
  customer: 'ada',
  state: 'STATE_PAID',
  lines: [{ sku: 'tea', quantity: 2 }, { sku: 'milk', quantity: 1 }],
  notes: { gift: 'yes' },
  placed: { seconds: '1700000000', nanos: 5 },
  blob: Buffer.from([0, 1, 2, 255]).toString('base64'),
};

// Waits until busd lists a subscription (or monitor) on `pattern`: a subscriber started as a
// process is ready then.
async function subscribed(pattern) {
  await until(`a subscription to ${pattern}`, async () =>
    (await bus.sys('subscriptions')).subscriptions.some((s) => s.pattern === pattern), 10000);
}
async function served(name) {
  await until(`a service ${name}`, async () =>
    (await bus.sys('services')).services.some((s) => s.name === name && s.instances.length > 0), 10000);
}

before(async () => {
  await busd.start();
  bus = await connect({ endpoint: busd.endpoint, name: 'interop', protos: [ORDER_PROTO] });
});
after(async () => {
  if (bus) await bus.close();
  await busd.dispose();
});

test('what C++ publishes with a type Node never loaded is decoded through busd\'s registry', async () => {
  const sub = bus.subscribe('sensors.>');
  await bus.flush();
  const publisher = busd.cpp(['pub', 'sensors.lab.temp', '3']);
  const got = [];
  for await (const m of sub) {
    got.push(m);
    if (got.length === 3) break;
  }
  assert.equal(await publisher.exited, 0, publisher.err);
  assert.equal(got[0].type, 'testonly.v1.Reading');
  const values = await Promise.all(got.map((m) => m.decode()));
  assert.deepEqual(values.map((v) => v.seq), [1, 2, 3]);
  assert.equal(values[0].sensor, 'thermo-1');
  assert.equal(values[0].celsius, 21.5);
  assert.deepEqual(values[0].place, { room: 'lab', floor: -1 });
  assert.deepEqual(values[0].tags, ['test', 'only']);
  // Well-known types in protobuf's JSON mapping, as `bus sub --json` prints them.
  assert.equal(values[0].taken, '2023-11-14T22:13:20Z');
});

test('what Node publishes typed, `bus sub --json` decodes through the type Node registered', async () => {
  const sub = busd.busBackground(['sub', '--json', '--headers', '--count', '1', 'shop.orders.*']);
  await subscribed('shop.orders.*');
  assert.equal(bus.publish('shop.orders.new', order, { type: 'nodeonly.v1.Order', headers: { trace: 't1' } }), true);
  assert.equal(await sub.exited, 0, sub.err);
  const line = JSON.parse(sub.out.trim());
  assert.equal(line.subject, 'shop.orders.new');
  assert.equal(line.type, 'nodeonly.v1.Order');
  assert.deepEqual(line.headers, { trace: 't1' });
  const payload = line.payload;
  assert.equal(payload.id, order.id);
  assert.equal(payload.customer, 'ada');
  assert.equal(payload.state, 'STATE_PAID');
  assert.deepEqual(payload.lines, order.lines);
  assert.deepEqual(payload.notes, order.notes);
  assert.equal(payload.blob, order.blob);
  const types = await bus.sys('types');
  assert.ok(types.types.some((t) => t.name === 'nodeonly.v1.Order' && t.registered_by === bus.id));
});

test('raw bytes from `bus pub` arrive as a Buffer; Node\'s raw publish reaches `bus sub`', async () => {
  const sub = bus.subscribe('raw.in');
  await bus.flush();
  await busd.bus(['pub', '-H', 'k=v', 'raw.in', 'plain text']);
  for await (const m of sub) {
    assert.equal(m.type, '');
    assert.ok(Buffer.isBuffer(m.data));
    assert.equal(m.string(), 'plain text');
    assert.equal(m.headers.get('k'), 'v');
    await assert.rejects(m.decode(), { code: 'wrong_type' });
    break;
  }
  const cli = busd.busBackground(['sub', '--count', '1', 'raw.out']);
  await subscribed('raw.out');
  bus.publish('raw.out', Buffer.from('from node'));
  assert.equal(await cli.exited, 0, cli.err);
  assert.match(cli.out, /from node/);
});

test('Node calls C++ services: a typed reply, a service error, a service that dies', async () => {
  const reader = busd.cpp(['serve', 'cpp.reading']);
  const dier = busd.cpp(['die', 'cpp.die']);
  const failing = busd.busBackground(['serve', '--fail', 'out_of_paper', 'cpp.fail']);
  await served('cpp.reading');
  await served('cpp.die');
  await served('cpp.fail');
  const reply = await bus.request('cpp.reading', 'probe-7', { timeout: 5000 });
  assert.equal(reply.type, 'testonly.v1.Reading');
  const value = await reply.decode();
  assert.equal(value.sensor, 'probe-7');
  await assert.rejects(bus.request('cpp.fail', 'x'), { code: 'request_failed', errorName: 'out_of_paper' });
  await assert.rejects(bus.request('cpp.die', 'x'), { code: 'service_lost' });
  reader.kill();
  failing.kill();
  await Promise.all([reader.exited, dier.exited, failing.exited]);
});

test('`bus req` calls a Node service, raw and typed (the request type from busd\'s registry)', async () => {
  bus.serve('node.upper', (req) => req.string().toUpperCase());
  bus.serve('node.order', async (req) => {
    const o = await req.decode();
    return { ...o, customer: o.customer.toUpperCase(), state: 'STATE_NEW' };
  }, { type: 'nodeonly.v1.Order' });
  await bus.flush();
  assert.equal((await busd.bus(['req', 'node.upper', 'shout'])).trim(), 'SHOUT');
  const out = await busd.bus(['--json', 'req', '--type', 'nodeonly.v1.Order', 'node.order',
    JSON.stringify({ id: '5', customer: 'bob', lines: [{ sku: 'x', quantity: 3 }] })]);
  const reply = JSON.parse(out.trim());
  assert.equal(reply.type, 'nodeonly.v1.Order');
  assert.equal(reply.payload.customer, 'BOB');
  assert.equal(reply.payload.state, 'STATE_NEW');
  assert.equal(reply.payload.id, '5');
  await assert.rejects(busd.bus(['req', '--timeout', '200ms', 'node.nobody', 'x']), (e) => e.exitCode === 4);
});

test('a typed message Node cannot resolve fails with unknown_type, not a crash', async () => {
  assert.throws(() => bus.publish('x.y', { a: 1 }, { type: 'nowhere.v1.Missing' }), { code: 'unknown_type' });
  assert.throws(() => bus.publish('x.y', { a: 1 }), { code: 'unknown_type' });
  await assert.rejects(bus.types.resolve('nowhere.v1.Missing'), { code: 'unknown_type' });
  // A payload that is not its type: wrong_type when decoded.
  const sub = bus.subscribe('lies');
  await bus.flush();
  bus._send({ kind: 2, subject: 'lies', typeUrl: 'type.googleapis.com/nodeonly.v1.Order', payload: Buffer.from([0x0a, 0xff]) });
  for await (const m of sub) {
    await assert.rejects(m.decode(), { code: 'wrong_type' });
    break;
  }
});
