'use strict';
// The Node.js side of bench/languages_bench.cpp: the Node client of bus (clients/node) against
// busd, or nats.js (npm `nats`, pinned in bench/node/package-lock.json) against nats-server,
// run the same way. This process is the publisher or the requester; it forks itself as the
// subscriber or the responder. Prints one JSON line on stdout:
//
//   node languages_peer.js bus unix://PATH  pubsub SIZE SECONDS   {"messages":N,"seconds":S}
//   node languages_peer.js nats PORT        pubsub SIZE SECONDS
//   node languages_peer.js bus|nats ADDRESS reqrep SIZE COUNT WARMUP
//                                           {"round_trips":N,"p50_us":X,"p99_us":Y}
//
// or {"error":"..."} and exit status 1.
//
// pubsub: the publisher publishes SIZE-byte messages for SECONDS, a batch of 256 per turn of
// the event loop (and, for bus, waiting for 'drain' when publish() says the queue is full;
// nats.js has no such signal and buffers), then an end marker, again every 100 ms until the
// subscriber answers (a broker drops for a subscriber that cannot keep up, the marker too);
// the subscriber counts from the first message to the last before the marker. reqrep: one
// request at a time, each timed.
const { fork } = require('child_process');
const path = require('path');

const SUBJECT = 'bench.data';
const END = 'bench.end';
const SERVICE = 'bench.echo';
const BATCH = 256;

const now = () => process.hrtime.bigint();
const report = (r) => process.stdout.write(JSON.stringify(r) + '\n');
const fail = (e) => { report({ error: String(e && e.stack ? e.stack : e) }); process.exit(1); };
const turn = () => new Promise((r) => setImmediate(r));

// The two clients behind one small interface.
async function open(kind, address, name) {
  if (kind === 'bus') {
    const { connect } = require(path.join(__dirname, '..', '..', 'clients', 'node'));
    const bus = await connect({ endpoint: address, name });
    return {
      publish: (s, d) => bus.publish(s, d),
      drained: () => new Promise((r) => bus.once('drain', r)),
      subscribe: (s, cb) => bus.subscribe(s, { callback: (e, m) => cb(m.data) }),
      serve: (s) => bus.serve(s, (req) => req.data),
      request: (s, d) => bus.request(s, d, { timeout: 5000 }),
      flush: () => bus.flush(),
      close: () => bus.close(),
    };
  }
  const { connect } = require('nats');
  const nc = await connect({ servers: `127.0.0.1:${address}`, name });
  return {
    publish: (s, d) => { nc.publish(s, d); return true; },
    drained: () => Promise.resolve(),
    subscribe: (s, cb) => nc.subscribe(s, { callback: (e, m) => cb(m.data) }),
    serve: (s) => nc.subscribe(s, { callback: (e, m) => m.respond(m.data) }),
    request: (s, d) => nc.request(s, d, { timeout: 5000 }),
    flush: () => nc.flush(),
    close: () => nc.close(),
  };
}

// The forked half: subscriber or responder. Tells the parent 'ready', then the result.
async function child(kind, address, mode) {
  const c = await open(kind, address, 'bench-' + mode);
  if (mode === 'subscriber') {
    let n = 0, first = 0n, last = 0n;
    c.subscribe(SUBJECT, () => { if (n++ === 0) first = now(); last = now(); });
    let ended = false;
    c.subscribe(END, () => {
      if (ended) return;
      ended = true;
      process.send({ messages: n, seconds: n > 1 ? Number(last - first) / 1e9 : 0 });
      c.close().then(() => process.exit(0));
    });
  } else {
    c.serve(SERVICE);
    process.on('message', () => c.close().then(() => process.exit(0)));
  }
  await c.flush();
  process.send('ready');
}

async function main() {
  const [kind, address, what, ...args] = process.argv.slice(2);
  if (process.env.BENCH_CHILD) return child(kind, address, process.env.BENCH_CHILD);
  const role = what === 'pubsub' ? 'subscriber' : 'responder';
  const peer = fork(__filename, process.argv.slice(2), { env: { ...process.env, BENCH_CHILD: role } });
  const messages = [];
  let wake = null;
  peer.on('message', (m) => { messages.push(m); if (wake) wake(); });
  peer.on('exit', (code) => { if (code) fail(new Error(`the ${role} exited with ${code}`)); });
  const next = async () => { while (!messages.length) await new Promise((r) => { wake = r; }); return messages.shift(); };
  if ((await next()) !== 'ready') throw new Error('the child did not get ready');
  const c = await open(kind, address, 'bench-main');
  const size = Number(args[0]);
  const payload = Buffer.alloc(size, 0x61);
  if (what === 'pubsub') {
    const until = now() + BigInt(Math.round(Number(args[1]) * 1e9));
    while (now() < until) {
      let room = true;
      for (let i = 0; i < BATCH && room; i++) room = c.publish(SUBJECT, payload);
      if (!room) await c.drained();
      else await turn();
    }
    const result = next();
    let answered = false;
    result.then(() => { answered = true; });
    while (!answered) {
      c.publish(END, Buffer.alloc(0));
      await c.flush();
      await Promise.race([result, new Promise((r) => setTimeout(r, 100))]);
    }
    report(await result);
  } else {
    const count = Number(args[1]), warmup = Number(args[2]);
    const samples = [];
    for (let i = 0; i < warmup + count; i++) {
      const t0 = now();
      await c.request(SERVICE, payload);
      if (i >= warmup) samples.push(Number(now() - t0) / 1e3);
    }
    peer.send('stop');
    samples.sort((a, b) => a - b);
    const pct = (p) => samples[Math.min(samples.length - 1, Math.max(0, Math.ceil(p * samples.length) - 1))];
    report({ round_trips: samples.length, p50_us: pct(0.5), p99_us: pct(0.99) });
  }
  await c.close();
  await new Promise((r) => (peer.exitCode !== null ? r() : peer.once('exit', r)));
}

main().catch(fail);
