'use strict';
// The Node.js peer of bench/channel_bench.cpp: process.send() with 'json' serialization between
// a Node parent and a child_process.fork() child, measured as the C++ cases are (on the
// receiver, from the first message to the end of the stream). Prints one JSON line on stdout:
//
//   node channel_peer.js throughput SIZE SECONDS       {"messages":N,"seconds":S}
//   node channel_peer.js rtt SIZE ROUND_TRIPS WARMUP   {"round_trips":N,"p50_us":X,"p99_us":Y}
//   node channel_peer.js fds SECONDS                   {"messages":N,"seconds":S}
//
// or {"error":"..."} and exit status 1.
const { fork } = require('child_process');
const net = require('net');
const os = require('os');
const path = require('path');

const FD_MESSAGE = 'x'.repeat(8); // as fd_message_payload in channel_bench.cpp
// Handle messages in flight at once: Node sends one handle per NODE_HANDLE_ACK and queues the
// rest, so a few keep its queue busy without growing it without bound.
const FD_WINDOW = 16;

const now = () => process.hrtime.bigint();
const seconds = (from, to) => Number(to - from) / 1e9;

function report(result) {
  process.stdout.write(JSON.stringify(result) + '\n');
}

function failWith(error) {
  report({ error: String(error && error.stack ? error.stack : error) });
  process.exit(1);
}

function forkChild(role, args) {
  const child = fork(__filename, [role, ...args.map(String)], {
    serialization: 'json',
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  child.on('error', failWith);
  return child;
}

// Resolves with the child's exit; a failed child fails the run.
function exited(child) {
  return new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      if (code !== 0) failWith(`child exited with code ${code} signal ${signal}`);
      resolve();
    });
  });
}

// --- throughput: the child sends, the parent counts ---------------------------------------------

async function throughput(size, duration) {
  const child = forkChild('child:sender', [size, duration]);
  let messages = 0;
  let malformed = 0;
  let first = 0n;
  let end = 0n;
  child.on('message', (message) => {
    if (messages++ === 0) first = now();
    if (message.length !== size) malformed++;
  });
  child.on('disconnect', () => { end = now(); });
  await exited(child);
  if (malformed) failWith(`${malformed} malformed messages`);
  report({ messages, seconds: seconds(first, end) });
}

function sender(size, duration) {
  const message = 'x'.repeat(size);
  const deadline = now() + BigInt(Math.round(duration * 1e9));
  // Backpressure as Node offers it: send() returns false once the channel's write queue is
  // past 128 KiB; the callback of the next send fires when the queue has been written out.
  const pump = () => {
    for (;;) {
      for (let i = 0; i < 64; i++) {
        if (!process.send(message)) {
          process.send(message, pump);
          return;
        }
      }
      if (now() >= deadline) {
        // disconnect() with writes still queued would drop them: wait for the last one.
        process.send(message, () => process.disconnect());
        return;
      }
    }
  };
  pump();
}

// --- round trips: the parent pings, the child echoes --------------------------------------------

function percentile(sorted, p) {
  return sorted[Math.max(Math.ceil(p * sorted.length), 1) - 1];
}

async function rtt(size, roundTrips, warmup) {
  const child = forkChild('child:echo', []);
  const message = 'x'.repeat(size);
  const samples = new Float64Array(roundTrips);
  let done = 0;
  let sentAt = 0n;
  child.on('message', (reply) => {
    const at = now();
    if (reply.length !== size) failWith('malformed echo');
    if (done >= warmup) samples[done - warmup] = Number(at - sentAt) / 1e3;
    if (++done === warmup + roundTrips) {
      child.disconnect();
      return;
    }
    sentAt = now();
    child.send(message);
  });
  sentAt = now();
  child.send(message);
  await exited(child);
  samples.sort();
  report({
    round_trips: roundTrips,
    p50_us: percentile(samples, 0.5),
    p99_us: percentile(samples, 0.99),
  });
}

function echo() {
  process.on('message', (message) => process.send(message));
}

// --- file descriptors: the parent passes one socket over and over, the child closes each copy ----

function connectedSocket() {
  const socketPath = path.join(os.tmpdir(), `bus-bench-${process.pid}.sock`);
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(socketPath, () => {
      const client = net.connect(socketPath, () => resolve({ server, client }));
      client.on('error', reject);
    });
  });
}

async function fds(duration) {
  const { server, client } = await connectedSocket();
  const child = forkChild('child:fd-receiver', []);
  const deadline = now() + BigInt(Math.round(duration * 1e9));
  let inFlight = 0;
  let finished = false;
  const finish = () => {
    finished = true;
    // Sent after the last handle, so Node delivers it after that handle has been acknowledged.
    child.send('end');
    child.once('message', (result) => {
      report(result);
      child.disconnect();
      client.destroy();
      server.close();
    });
  };
  const pump = () => {
    while (inFlight < FD_WINDOW && now() < deadline) {
      inFlight++;
      // keepOpen: without it Node closes our socket once the child acknowledges it.
      child.send(FD_MESSAGE, client, { keepOpen: true }, sent);
    }
    if (inFlight === 0 && !finished) finish();
  };
  function sent(error) {
    if (error) failWith(error);
    inFlight--;
    pump();
  }
  pump();
  await exited(child);
}

function fdReceiver() {
  let messages = 0;
  let malformed = 0;
  let first = 0n;
  process.on('message', (message, handle) => {
    if (handle) {
      if (messages++ === 0) first = now();
      if (message !== FD_MESSAGE) malformed++;
      handle.destroy();
    } else if (message === 'end') {
      if (malformed) failWith(`${malformed} malformed messages`);
      process.send({ messages, seconds: seconds(first, now()) });
    }
  });
}

// --- main -------------------------------------------------------------------------------------

const [role, ...args] = process.argv.slice(2);
const numbers = args.map(Number);
const roles = {
  throughput: () => throughput(numbers[0], numbers[1]),
  rtt: () => rtt(numbers[0], numbers[1], numbers[2]),
  fds: () => fds(numbers[0]),
  'child:sender': () => sender(numbers[0], numbers[1]),
  'child:echo': echo,
  'child:fd-receiver': fdReceiver,
};
if (!roles[role]) failWith(`unknown role ${role}; see the comment at the top of ${__filename}`);
Promise.resolve().then(roles[role]).catch(failWith);
