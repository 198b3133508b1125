// The hand-written Envelope codec against protobufjs reading bus's own envelope.proto (so the
// field numbers cannot drift from the spec), and a busd that is not one: a fake unix server
// that sends garbage, an oversized length, or closes in the middle of a frame. Each gives a
// clear error and nothing else: no crash, no hang, no buffer growing past one frame.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { once } = require('node:events');
const protobuf = require('protobufjs');
const { connect } = require('..');
const wire = require('../lib/wire');

const PROTO_DIR = path.join(__dirname, '..', '..', '..', 'proto');
const root = new protobuf.Root().loadSync(path.join(PROTO_DIR, 'bus', 'v1', 'broker.proto'), { keepCase: true });
const envelopeRoot = new protobuf.Root().loadSync(path.join(PROTO_DIR, 'bus', 'v1', 'envelope.proto'), { keepCase: true });
const Envelope = envelopeRoot.lookupType('bus.v1.Envelope');
const Welcome = root.lookupType('bus.v1.Welcome');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bus-node-wire-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function frame(e) {
  const body = wire.envelopeSize(e);
  const buf = Buffer.alloc(4 + body);
  assert.equal(wire.encodeInto(buf, 0, e, body), buf.length);
  return buf;
}

test('what the client encodes, protobuf reads as the Envelope envelope.proto defines', () => {
  const e = {
    kind: wire.KIND.REQUEST, subject: 'svc.name', typeUrl: 'type.googleapis.com/a.B', id: 300,
    correlationId: 2 ** 40, deadlineNs: 1765000000123 * 1e6, headers: [['k', 'v'], ['ü', '']],
    payload: Buffer.from('payload bytes'),
  };
  const m = Envelope.toObject(Envelope.decode(frame(e).subarray(4)), { longs: String, bytes: String });
  assert.equal(m.kind, wire.KIND.REQUEST);
  assert.equal(Buffer.from(m.subject, 'base64').toString(), 'svc.name');
  assert.equal(Buffer.from(m.type_url, 'base64').toString(), e.typeUrl);
  assert.equal(m.id, '300');
  assert.equal(m.correlation_id, String(2 ** 40));
  assert.equal(m.deadline_unix_ns, BigInt(e.deadlineNs).toString()); // exact to the double's 256 ns
  assert.deepEqual(m.headers.map((h) => [Buffer.from(h.key, 'base64').toString(), Buffer.from(h.value || '', 'base64').toString()]), e.headers);
  assert.equal(Buffer.from(m.payload, 'base64').toString(), 'payload bytes');
});

test('what protobuf encodes, the client decodes', () => {
  const bytes = Envelope.encode(Envelope.fromObject({
    kind: 2, subject: Buffer.from('a.b'), type_url: Buffer.from('t'), payload: Buffer.from([1, 2, 3]),
    id: 7, correlation_id: 9, source: Buffer.from('c12'), deadline_unix_ns: '1765000000000000000',
    headers: [{ key: Buffer.from('x'), value: Buffer.from('y') }], fd_count: 1, subscription_id: 42,
    monitored_kind: 3, reply_to: Buffer.from('ignored'),
  })).finish();
  const e = wire.decodeEnvelope(Buffer.from(bytes), 0, bytes.length);
  assert.deepEqual({ ...e, payload: [...e.payload] }, {
    kind: 2, subject: 'a.b', typeUrl: 't', payload: [1, 2, 3], id: 7, correlationId: 9, source: 'c12',
    deadlineNs: 1765000000000000000, headers: [['x', 'y']], fdCount: 1, subscriptionId: 42, monitoredKind: 3,
  });
});

test('frames split anywhere are reassembled; a length over the limit throws at once', () => {
  const frames = Buffer.concat([frame({ kind: 2, subject: 'a', payload: Buffer.alloc(100, 1) }),
    frame({ kind: 2, subject: 'b', payload: Buffer.alloc(3, 2) })]);
  for (let cut = 0; cut <= frames.length; cut++) {
    const got = [];
    const r = new wire.FrameReader(1000, (buf, s, e) => got.push(wire.decodeEnvelope(buf, s, e).subject));
    r.push(frames.subarray(0, cut));
    r.push(frames.subarray(cut));
    assert.deepEqual(got, ['a', 'b']);
    assert.equal(r.partial, 0);
  }
  const r = new wire.FrameReader(1000, () => assert.fail('no frame'));
  assert.throws(() => r.push(Buffer.from([0xe9, 0x03, 0, 0])), { code: 'frame_too_large' });
});

// A unix server that answers each connection with `reply(socket)`.
async function fakeBusd(name, reply) {
  const file = path.join(tmp, name + '.sock');
  let connections = 0;
  const server = net.createServer((s) => { connections++; s.on('error', () => {}); reply(s, connections); });
  server.listen(file);
  await once(server, 'listening');
  return { endpoint: 'unix://' + file, server, connections: () => connections };
}

// events.once() would reject on the 'error' event these tests expect beside it.
const event = (emitter, name) => new Promise((resolve) => emitter.once(name, resolve));

function welcome(brokerId) {
  return frame({ kind: wire.KIND.CONTROL, subject: 'welcome',
    payload: Buffer.from(Welcome.encode({ client_id: 'c1', broker_id: brokerId, heartbeat_ms: 1000 }).finish()) });
}

test('a peer that is not busd: connect rejects with a clear error', async (t) => {
  const cases = [
    ['http', (s) => s.end('HTTP/1.1 400 Bad Request\r\n\r\n'), 'frame_too_large', /over this client's limit/],
    ['garbage', (s) => s.end(Buffer.from([3, 0, 0, 0, 0xff, 0xff, 0xff])), 'bad_frame', /not a bus.v1.Envelope/],
    ['wrongwire', (s) => s.end(Buffer.from([2, 0, 0, 0, 0x0d, 0x01])), 'bad_frame', /not a bus.v1.Envelope/],
    ['midframe', (s) => s.end(Buffer.concat([Buffer.from([100, 0, 0, 0]), Buffer.alloc(10)])), 'truncated_frame', /middle of a frame/],
    ['silent-close', (s) => s.end(), 'broker_unavailable', /no broker/],
  ];
  for (const [name, reply, code, message] of cases) {
    await t.test(name, async () => {
      const fake = await fakeBusd(name, reply);
      await assert.rejects(connect({ endpoint: fake.endpoint, timeout: 5000 }), { code, message });
      fake.server.close();
    });
  }
  await assert.rejects(connect({ endpoint: 'unix://' + path.join(tmp, 'nobody.sock') }),
    { code: 'broker_unavailable', message: /is busd running/ });
  await assert.rejects(connect({ endpoint: 'ipc:///tmp/x' }), { code: 'bad_endpoint' });
});

test('garbage after the welcome: a disconnected event naming it, then the client reconnects', async () => {
  const fake = await fakeBusd('later', (s, n) => {
    s.write(welcome('b' + n));
    if (n === 1) setTimeout(() => s.write(Buffer.from([5, 0, 0, 0, 0x0f, 1, 2, 3, 4])), 20);
  });
  const c = await connect({ endpoint: fake.endpoint, reconnectMin: 10 });
  const errors = [];
  c.on('error', (e) => errors.push(e));
  const why = await event(c, 'disconnected');
  assert.equal(why.code, 'bad_frame');
  const info = await event(c, 'connected');
  assert.equal(info.brokerId, 'b2');
  assert.equal(fake.connections(), 2);
  assert.equal(errors[0].code, 'bad_frame');
  await c.close();
  fake.server.close();
});

test('a frame over maxMessageSize from the peer is refused before it is buffered', async () => {
  const fake = await fakeBusd('huge', (s, n) => {
    s.write(welcome('b' + n));
    if (n === 1) {
      const len = Buffer.alloc(4);
      len.writeUInt32LE(64 * 1024 * 1024);
      s.write(len); // announces 64 MiB, and never sends it
    }
  });
  const c = await connect({ endpoint: fake.endpoint, maxMessageSize: 1024 * 1024 });
  const why = await event(c, 'disconnected');
  assert.equal(why.code, 'frame_too_large');
  await c.close();
  fake.server.close();
});
