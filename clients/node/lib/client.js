// The client: one unix:// connection to busd, with the C++ client's semantics
// (bus/include/bus/client.hpp, bus/src/client/client.cpp) in nats.js's idiom.
//
// The link's state is never a guess. The socket closing means no broker, at once: every call in
// flight fails with broker_unavailable, so does every request made until a broker welcomes us
// again (without being sent), and the client reconnects with backoff. A new connection is a new
// client to busd: it says hello, then re-sends its subscriptions and services (and its types,
// when it next sends them). A welcome or pong with another broker id than before means busd
// was replaced under us: introduce ourselves again, as the C++ client does.
//
// What is sent goes into a chunk that is written to the socket once per turn of the event
// loop (process.nextTick): a burst of publishes costs one write, and a request sent on its own
// is written before the loop waits for I/O. What the chunk held for a connection that is lost
// is dropped with it, so a request that failed is never sent later.
'use strict';

const net = require('node:net');
const path = require('node:path');
const { EventEmitter } = require('node:events');
const wire = require('./wire');
const { BusError, fromWire, abortError } = require('./errors');
const { defaultEndpoint, socketPath } = require('./endpoint');
const { Types, typeName, typeUrl, nameOfUrl, protobuf } = require('./types');

const { KIND, control } = wire;
const CHUNK = 64 * 1024;

const DEFAULTS = {
  name: '',
  timeout: 5000,             // connect(): the first welcome
  heartbeat: 1000,           // pings
  reconnectMin: 50,          // backoff
  reconnectMax: 2000,
  maxMessageSize: 8 << 20,   // busd's default limit on a frame's body
  highWaterMark: 128 << 10,  // publish() returns false past this many queued bytes
  pending: 65536,            // messages a subscription holds for a reader that lags
  linger: 2000,              // close(): how long to wait for what is queued to be written
};

// Frames busd sends carry its header around a payload of at most maxMessageSize.
const HEADER_ROOM = 64 * 1024;

class Msg {
  constructor(client, e) {
    this.subject = e.subject;
    this.data = e.payload;
    this.typeUrl = e.typeUrl;
    this.source = e.source;
    this.id = e.id;
    this.sid = e.subscriptionId;
    this.fdCount = e.fdCount; // fds cannot reach Node over a net.Socket: the kernel closes them
    this.monitoredKind = e.monitoredKind;
    this._headers = e.headers;
    this._client = client;
  }

  // The protobuf type's full name (pkg.Msg), '' for raw bytes.
  get type() { return this.typeUrl ? nameOfUrl(this.typeUrl) : ''; }

  get headers() {
    if (!(this._headers instanceof Map)) this._headers = new Map(this._headers || []);
    return this._headers;
  }

  string() { return this.data.toString('utf8'); }
  json() { return JSON.parse(this.string()); }

  // The payload decoded through its type: this program's, else busd's registry (fetched once).
  // Rejects with wrong_type (not that type, or no type) or unknown_type.
  async decode() {
    if (!this.typeUrl) {
      throw new BusError('wrong_type', `the message on ${this.subject || 'its subject'} has no ` +
        'protobuf type (raw bytes: use .data, .string() or .json())');
    }
    const type = await this._client.types.resolve(this.type);
    return Types.decode(type, this.data);
  }
}

// A request handed to a serve() handler: answer with the handler's return value (or a rejection),
// or with respond()/fail() at any time; the first answer counts.
class Request extends Msg {
  constructor(client, e) {
    super(client, e);
    this.requester = e.source;
    // When the requester stops waiting (ms since the epoch), 0 if it did not say.
    this.deadline = e.deadlineNs ? Math.floor(e.deadlineNs / 1e6) : 0;
    this.answered = false;
  }

  respond(message, options = {}) {
    if (this.answered) return false;
    const c = this._client;
    // Either may throw (unknown_type, message_too_large): the request is then not answered.
    const { payload, typeUrl: url } = c._payload(message, options);
    const sent = c._sendOrCount({ kind: KIND.REPLY, correlationId: this.id, payload, typeUrl: url,
      headers: headerPairs(options.headers) });
    this.answered = true;
    return sent;
  }

  // The requester gets request_failed with this name and detail (or the error the name means,
  // if it is one of bus's own, such as no_responders).
  fail(name, detail = '') {
    if (this.answered) return false;
    this.answered = true;
    return this._client._sendOrCount({ kind: KIND.ERROR, correlationId: this.id, subject: name,
      headers: detail ? [['detail', String(detail)]] : null });
  }
}

class Subscription {
  constructor(client, sid, pattern, options) {
    this.sid = sid;
    this.pattern = pattern;
    this.queue = options.queue || '';
    this.max = options.max || 0;
    this.received = 0;
    this.dropped = 0;
    this._client = client;
    this._callback = options.callback || null;
    this._limit = options.pending || client.options.pending;
    this._queue = [];
    this._head = 0;
    this._waiter = null;
    this._done = false;
    this.closed = new Promise((resolve) => { this._closed = resolve; });
  }

  _push(msg) {
    if (this._done) return;
    this.received++;
    if (this._callback) {
      try { this._callback(null, msg); } catch (e) { this._client._report(e); }
    } else if (this._waiter) {
      const w = this._waiter;
      this._waiter = null;
      w({ value: msg, done: false });
    } else if (this._queue.length - this._head < this._limit) {
      this._queue.push(msg);
    } else {
      // The reader lags by `pending` messages: drop, as busd drops for a slow consumer.
      this.dropped++;
      this._client.emit('slow_consumer', { dropped: 1, subscription: this, local: true });
    }
    if (this.max && this.received >= this.max) this.unsubscribe();
  }

  next() {
    if (this._head < this._queue.length) {
      const value = this._queue[this._head];
      this._queue[this._head++] = undefined;
      if (this._head === this._queue.length) { this._queue = []; this._head = 0; }
      return Promise.resolve({ value, done: false });
    }
    if (this._done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => { this._waiter = resolve; });
  }

  return() {
    this.unsubscribe();
    this._queue = [];
    this._head = 0;
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator]() { return this; }

  // Ends it: busd stops sending, the iterator yields what it holds, then ends.
  unsubscribe() {
    if (this._done) return;
    this._client._unsubscribe(this);
    this._end();
  }

  _end() {
    if (this._done) return;
    this._done = true;
    if (this._waiter) {
      const w = this._waiter;
      this._waiter = null;
      w({ value: undefined, done: true });
    }
    this._closed();
  }
}

function headerPairs(headers) {
  if (!headers) return null;
  const pairs = headers instanceof Map || Array.isArray(headers) ? [...headers] : Object.entries(headers);
  return pairs.length ? pairs.map(([k, v]) => [String(k), String(v)]) : null;
}

class Client extends EventEmitter {
  constructor(endpoint, options) {
    super();
    this.endpoint = endpoint;
    this.options = options;
    this.path = socketPath(endpoint);
    this.types = new Types((service, payload) => this.request(service, payload));
    for (const root of [].concat(options.root || [])) this.types.add(root);
    if (options.protos) this.types.add(options.protos, { includeDirs: options.includeDirs || [] });
    this.id = '';          // what busd calls us, once welcomed
    this.brokerId = '';
    this.welcomed = false;
    this.closed = false;
    this.unavailable = false; // known: no broker (until one welcomes us again)
    this.nextId = 1;
    this.subs = new Map();     // sid -> Subscription
    this.services = new Map(); // name -> { handler, options }
    this.calls = new Map();    // id -> { resolve, reject, timer, what, cleanup }
    this.registered = new Set(); // types described to the current broker
    this.socket = null;
    this.connected = false;    // the socket is open
    this.chunk = null;
    this.chunkStart = 0;
    this.chunkEnd = 0;
    this.flushQueued = false;
    this.needDrain = false;
    this.unsent = 0;
    this.unsentReported = 0;
    this.inFlight = 0;         // serve() handlers running
    this.reconnectTimer = null;
    this.reconnectDelay = options.reconnectMin;
    this.flushChunk = () => { this.flushQueued = false; this._write(); };
    this.heartbeatTimer = setInterval(() => this._heartbeat(), options.heartbeat);
    this.heartbeatTimer.unref();
  }

  // --- the link -------------------------------------------------------------------------------

  _open(onFirst) {
    const socket = net.createConnection(this.path);
    this.socket = socket;
    const reader = new wire.FrameReader(this.options.maxMessageSize + HEADER_ROOM,
      (buf, start, end) => this._frame(buf, start, end));
    let failure = null;
    socket.setNoDelay?.(true);
    socket.on('connect', () => {
      this.connected = true;
      this.reconnectDelay = this.options.reconnectMin;
      this._linkUp();
    });
    socket.on('data', (chunk) => {
      if (failure) return;
      try {
        reader.push(chunk);
      } catch (e) {
        failure = e;
        socket.destroy();
      }
    });
    socket.on('drain', () => {
      if (this.needDrain && socket === this.socket) { this.needDrain = false; this.emit('drain'); }
    });
    socket.on('error', (e) => { if (!failure) failure = e; });
    socket.on('close', () => {
      if (socket !== this.socket) return;
      if (!failure && reader.partial) {
        failure = new BusError('truncated_frame', `busd closed the connection in the middle of ` +
          `a frame (${reader.partial} bytes of it had arrived)`);
      }
      const wasConnected = this.connected;
      this.socket = null;
      this.connected = false;
      this.chunk = null; // what it held was for that connection: never sent to the next
      this.chunkStart = this.chunkEnd = 0;
      if (onFirst) onFirst(failure, wasConnected);
      else this._linkDown(failure, wasConnected);
    });
  }

  _linkUp() {
    // A new connection is a new client to busd, restarted or not.
    this.brokerId = '';
    this.registered.clear();
    this._control('hello', control.hello(this.options.name));
    this._registerEverything();
  }

  _registerEverything() {
    for (const sub of this.subs.values()) this._control('sub', control.subscribe(sub.sid, sub.pattern, sub.queue));
    for (const name of this.services.keys()) this._control('serve', control.serve(name));
  }

  _linkDown(failure, wasConnected) {
    if (this.closed) return;
    if (failure && wasConnected && failure.code !== 'ECONNRESET' && failure.code !== 'EPIPE') this._report(failure);
    if (!this.unavailable) { // one event per outage, however many ways it shows
      this.unavailable = true;
      this.welcomed = false;
      this._failCalls(() => new BusError('broker_unavailable', `no broker at ${this.endpoint}`));
      const why = failure && failure.code && !['ECONNRESET', 'EPIPE'].includes(failure.code) ? failure
        : new BusError('broker_unavailable', `no broker at ${this.endpoint}`);
      this.emit('disconnected', why);
    }
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.closed) this._open(null);
    }, this.reconnectDelay);
    this.reconnectDelay = Math.min(this.reconnectDelay * 2, this.options.reconnectMax);
  }

  _heartbeat() {
    if (this.closed) return;
    if (!this.unavailable && this.connected) this._control('ping', null);
    this._reportUnsent();
  }

  // --- sending --------------------------------------------------------------------------------

  // Queues the frame for `e`; false when there is no connection to queue it on. A message over
  // maxMessageSize throws message_too_large: busd would drop the connection for it.
  _send(e) {
    const body = wire.envelopeSize(e);
    if (body > this.options.maxMessageSize) {
      throw new BusError('message_too_large', `a message of ${body} bytes is over the limit of ` +
        `${this.options.maxMessageSize} (maxMessageSize, busd's limits.max_message_size)`);
    }
    if (this.closed || !this.connected) return false;
    const need = 4 + body;
    if (!this.chunk || this.chunkEnd + need > this.chunk.length) {
      this._write();
      this.chunk = Buffer.allocUnsafe(Math.max(CHUNK, need));
      this.chunkStart = this.chunkEnd = 0;
    }
    this.chunkEnd = wire.encodeInto(this.chunk, this.chunkEnd, e, body);
    if (!this.flushQueued) {
      this.flushQueued = true;
      process.nextTick(this.flushChunk);
    }
    return true;
  }

  _write() {
    if (this.chunkEnd > this.chunkStart && this.socket) {
      this.socket.write(this.chunk.subarray(this.chunkStart, this.chunkEnd));
      this.chunkStart = this.chunkEnd;
    }
  }

  // Bytes queued and not yet taken by the kernel.
  get queuedBytes() {
    return (this.socket ? this.socket.writableLength : 0) + (this.chunkEnd - this.chunkStart);
  }

  _control(op, body, id = 0) {
    return this._send({ kind: KIND.CONTROL, subject: op, payload: body, id });
  }

  // A message that could not be queued: counted, and told by a rate-limited error event (the
  // first of a run at once, the rest at most once a heartbeat).
  _sendOrCount(e) {
    if (this._send(e)) return true;
    if (!this.closed) {
      this.unsent++;
      if (Date.now() - this.unsentReported >= this.options.heartbeat) this._reportUnsent();
    }
    return false;
  }

  _reportUnsent() {
    if (!this.unsent) return;
    this.unsentReported = Date.now();
    const dropped = this.unsent;
    this.unsent = 0;
    this._report(new BusError('broker_unavailable', `${dropped} message(s) not sent: no broker ` +
      `at ${this.endpoint}`, { dropped }));
  }

  // 'error' events: told to listeners, never thrown at a program that has none (they are
  // the broker refusing one message, or a link the client is already replacing).
  _report(error) {
    if (this.listenerCount('error')) this.emit('error', error);
  }

  // { payload, typeUrl } for a message given as bytes, a string, a protobufjs message, or a
  // plain object with options.type. A typed message's type is described to busd first.
  _payload(message, options) {
    const type = options.type || (message instanceof protobuf.Message ? message.$type : null);
    if (type) {
      const t = this.types.sendable(type);
      const payload = Types.encode(t, message);
      if (!this.registered.has(t)) {
        this.registered.add(t); // a new link describes it again
        this._send({ kind: KIND.CONTROL, subject: 'register_type', typeUrl: typeUrl(t),
          payload: this.types.descriptorSet(t) });
      }
      return { payload, typeUrl: typeUrl(t) };
    }
    if (message == null) return { payload: wire.EMPTY, typeUrl: '' };
    if (Buffer.isBuffer(message)) return { payload: message, typeUrl: '' };
    if (message instanceof Uint8Array) {
      return { payload: Buffer.from(message.buffer, message.byteOffset, message.byteLength), typeUrl: '' };
    }
    if (typeof message === 'string') return { payload: Buffer.from(message), typeUrl: '' };
    throw new BusError('unknown_type', 'a message that is not bytes or a string needs its ' +
      "protobuf type: { type: 'pkg.Msg' } (or a protobufjs message)");
  }

  // --- the API --------------------------------------------------------------------------------

  // True: queued for busd (which is not delivery). False: queued but past highWaterMark (wait
  // for 'drain'), or not queued because no broker is connected (an 'error' event counts those).
  publish(subject, message, options = {}) {
    const { payload, typeUrl: url } = this._payload(message, options);
    const sent = this._sendOrCount({ kind: KIND.PUBLISH, subject, typeUrl: url, payload,
      headers: headerPairs(options.headers) });
    if (sent && this.queuedBytes < this.options.highWaterMark) return true;
    this.needDrain = true;
    return false;
  }

  // `*` matches one token, `>` the rest; with a queue group each message goes to one member.
  // An async iterable of Msg (or options.callback(err, msg) for each); unsubscribe(), a break
  // out of the loop, drain() or close() ends it. A pattern busd refuses comes as an 'error'
  // event (invalid_subject, forbidden).
  subscribe(pattern, options = {}) {
    if (this.closed) throw new BusError('channel_closed', 'the client is closed');
    const sid = this.nextId++;
    const sub = new Subscription(this, sid, pattern, options);
    this.subs.set(sid, sub);
    this._control('sub', control.subscribe(sid, pattern, sub.queue));
    return sub;
  }

  _unsubscribe(sub) {
    if (this.subs.delete(sub.sid)) this._control('unsub', control.unsubscribe(sub.sid));
  }

  // Resolves with the reply (a Msg), or rejects with a BusError: no_responders, timeout,
  // service_lost, expired, broker_unavailable, channel_closed, message_too_large, forbidden,
  // request_failed (the service's own error: errorName, detail); or an AbortError.
  // busd never hands a service a request whose deadline (now + timeout) has passed.
  request(service, message, options = {}) {
    const timeout = options.timeout ?? 5000;
    const signal = options.signal;
    return new Promise((resolve, reject) => {
      if (signal && signal.aborted) return reject(abortError(signal));
      const { payload, typeUrl: url } = this._payload(message, options);
      const id = this._call(service, timeout, resolve, reject, signal);
      if (!id) return;
      let sent;
      try {
        sent = this._send({ kind: KIND.REQUEST, subject: service, id, typeUrl: url, payload,
          headers: headerPairs(options.headers), deadlineNs: (Date.now() + timeout) * 1e6 });
      } catch (e) {
        this._complete(id, e); // message_too_large: its timer goes with it
        return;
      }
      if (!sent) this._complete(id, new BusError('broker_unavailable', `no broker at ${this.endpoint}`));
    });
  }

  // A call awaiting its answer; 0 (and rejected) when it fails before anything is sent.
  _call(what, timeout, resolve, reject, signal) {
    if (this.closed) { reject(new BusError('channel_closed', `${what}: the client is closed`)); return 0; }
    if (this.unavailable) {
      reject(new BusError('broker_unavailable', `${what}: no broker at ${this.endpoint}`));
      return 0;
    }
    const id = this.nextId++;
    const call = { resolve, reject, what, timer: null, cleanup: null };
    call.timer = setTimeout(() => this._complete(id,
      new BusError('timeout', `timeout: no answer from ${what} within ${timeout} ms`)), timeout);
    if (signal) {
      const onAbort = () => this._complete(id, abortError(signal));
      signal.addEventListener('abort', onAbort, { once: true });
      call.cleanup = () => signal.removeEventListener('abort', onAbort);
    }
    this.calls.set(id, call);
    return id;
  }

  _complete(id, error, value) {
    const call = this.calls.get(id);
    if (!call) return false; // already completed (timed out, then the reply came)
    this.calls.delete(id);
    clearTimeout(call.timer);
    if (call.cleanup) call.cleanup();
    if (error) call.reject(error); else call.resolve(value);
    return true;
  }

  _failCalls(makeError) {
    for (const id of [...this.calls.keys()]) this._complete(id, makeError());
  }

  // Serves `service` (its requests are shared round-robin among every client serving the
  // name). The handler gets a Request and returns (or resolves to) the reply: bytes, a string,
  // a protobufjs message, a plain object with options.type, or nothing for an empty reply. A
  // thrown error answers with an ERROR named by its string `code` ('service_error' if none)
  // and its message as detail. Serving a name again replaces its handler.
  serve(service, handler, options = {}) {
    if (this.closed) throw new BusError('channel_closed', 'the client is closed');
    const had = this.services.has(service);
    this.services.set(service, { handler, options });
    if (!had) this._control('serve', control.serve(service));
    return { service, stop: () => this.unserve(service) };
  }

  unserve(service) {
    if (this.services.delete(service)) this._control('unserve', control.serve(service));
  }

  // To one client, by the id busd gave it (a message's `source`). An id nobody has comes back
  // as an 'error' event (no_such_client). Returns as publish() does.
  sendTo(clientId, message, options = {}) {
    const { payload, typeUrl: url } = this._payload(message, options);
    const sent = this._sendOrCount({ kind: KIND.DIRECT, subject: clientId, id: this.nextId++,
      typeUrl: url, payload, headers: headerPairs(options.headers) });
    return sent && this.queuedBytes < this.options.highWaterMark;
  }

  // Resolves once busd has processed everything sent before it (a ping answered by a pong):
  // after it, this client's subscriptions and services are in place.
  flush(timeout = 5000) {
    return new Promise((resolve, reject) => {
      const id = this._call('flush', timeout, resolve, reject, null);
      if (id && !this._control('ping', null, id)) {
        this._complete(id, new BusError('broker_unavailable', `no broker at ${this.endpoint}`));
      }
    });
  }

  // busd's own requests ('clients', 'subscriptions', 'services', 'stats', 'types', 'queues'),
  // decoded.
  async sys(what, payload) {
    const reply = await this.request('$sys.' + what, payload);
    return reply.decode();
  }

  // Ends the client without losing what is in flight (NATS's drain): withdraws its
  // subscriptions and services from busd, lets what busd had already routed here be handled
  // (iterators yield it, then end), waits for the answers of requests being served, then closes.
  async drain(timeout = 5000) {
    if (this.closed) throw new BusError('channel_closed', 'the client is closed');
    for (const sub of this.subs.values()) this._control('unsub', control.unsubscribe(sub.sid));
    for (const name of this.services.keys()) this._control('unserve', control.serve(name));
    const until = Date.now() + timeout;
    try {
      await this.flush(timeout);
      while (this.inFlight > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
    } finally {
      this.services.clear();
      for (const sub of this.subs.values()) sub._end();
      this.subs.clear();
      await this.close();
    }
  }

  // Writes what is queued (waiting up to `linger` ms), fails the calls in flight with
  // channel_closed, ends the subscriptions and closes. Nothing is received after it.
  close() {
    if (this._closing) return this._closing;
    this.closed = true;
    this.welcomed = false;
    clearInterval(this.heartbeatTimer);
    clearTimeout(this.reconnectTimer);
    this._failCalls(() => new BusError('channel_closed', 'the client was closed'));
    for (const sub of this.subs.values()) sub._end();
    this.subs.clear();
    this.services.clear();
    const socket = this.socket;
    this._closing = new Promise((resolve) => {
      if (!socket) return resolve();
      this._write();
      socket.removeAllListeners('data');
      const timer = setTimeout(() => socket.destroy(), this.options.linger);
      socket.once('close', () => { clearTimeout(timer); resolve(); });
      socket.end();
    }).then(() => { this.socket = null; this.connected = false; this.emit('closed'); });
    return this._closing;
  }

  // --- receiving ------------------------------------------------------------------------------

  _frame(buf, start, end) {
    const e = wire.decodeEnvelope(buf, start, end); // what a broken peer sent throws: the link ends
    try {
      this._dispatch(e);
    } catch (x) {
      // A listener of this program threw ('direct', 'connected', ...): an uncaught exception of
      // the program's, as Node makes it, but not a failure of the link, whose next frames follow.
      process.nextTick(() => { throw x; });
    }
  }

  _dispatch(e) {
    switch (e.kind) {
      case KIND.PUBLISH: {
        const sub = this.subs.get(e.subscriptionId);
        if (sub) sub._push(new Msg(this, e));
        break;
      }
      case KIND.REPLY: {
        const call = this.calls.get(e.correlationId);
        if (call) this._complete(e.correlationId, null, new Msg(this, e));
        break;
      }
      case KIND.ERROR: {
        const detail = detailOf(e);
        const call = this.calls.get(e.correlationId);
        if (call) this._complete(e.correlationId, fromWire(e.subject, detail, call.what));
        else this._report(fromWire(e.subject, detail, 'a message this client sent'));
        break;
      }
      case KIND.REQUEST:
        this._serve(e);
        break;
      case KIND.DIRECT:
        this.emit('direct', new Msg(this, e));
        break;
      case KIND.CONTROL:
        this._handleControl(e);
        break;
      default:
        break;
    }
  }

  _handleControl(e) {
    if (e.subject === 'welcome' || e.subject === 'pong') {
      const w = control.welcome(e.payload);
      const restarted = this.brokerId !== '' && this.brokerId !== w.brokerId;
      this.brokerId = w.brokerId;
      this.id = w.clientId;
      this.unavailable = false;
      if (restarted) {
        // A new broker knows nothing of us: introduce ourselves again.
        this.registered.clear();
        this._control('hello', control.hello(this.options.name));
        this._registerEverything();
      }
      if (!this.welcomed || restarted) {
        this.welcomed = true;
        this.emit('connected', { endpoint: this.endpoint, clientId: this.id, brokerId: this.brokerId,
          version: w.version });
        if (this.needDrain) { this.needDrain = false; this.emit('drain'); }
      }
      if (e.subject === 'pong' && e.correlationId) this._complete(e.correlationId, null, undefined);
    } else if (e.subject === 'slow_consumer') {
      this.emit('slow_consumer', { dropped: control.slowConsumer(e.payload).dropped, local: false });
    }
    // 'ping': hearing it is all it is for.
  }

  _serve(e) {
    const req = new Request(this, e);
    const served = this.services.get(e.subject);
    if (!served) { req.fail('no_responders', 'not served here any more'); return; }
    const answer = (value) => {
      if (req.answered) return;
      try {
        req.respond(value, served.options);
      } catch (x) {
        failWith(x);
      }
    };
    const failWith = (x) => {
      req.fail(x && typeof x.code === 'string' && x.code ? x.code : 'service_error',
        x && x.message ? x.message : String(x));
    };
    let result;
    try {
      result = served.handler(req);
    } catch (x) {
      failWith(x);
      return;
    }
    if (result && typeof result.then === 'function') {
      this.inFlight++;
      result.then(answer, failWith).finally(() => { this.inFlight--; });
    } else {
      answer(result);
    }
  }
}

function detailOf(e) {
  if (!e.headers) return '';
  for (const [k, v] of e.headers) if (k === 'detail') return v;
  return '';
}

// Connects to busd and resolves once it has welcomed this client; rejects with
// broker_unavailable (nobody listens), timeout (nobody answers), bad_endpoint, or what a broken
// peer did (bad_frame, frame_too_large, truncated_frame).
function connect(options = {}) {
  const opts = { ...DEFAULTS, name: path.basename(process.argv[1] || 'node'), ...options };
  let endpoint;
  let client;
  try {
    endpoint = opts.endpoint || defaultEndpoint();
    client = new Client(endpoint, opts);
  } catch (e) {
    return Promise.reject(e);
  }
  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      client.off('connected', onConnected);
      client.close();
      reject(error);
    };
    const onConnected = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(client);
    };
    const timer = setTimeout(() => fail(new BusError('timeout',
      `busd at ${endpoint} did not welcome this client within ${opts.timeout} ms`)), opts.timeout);
    client.once('connected', onConnected);
    client._open((failure, wasConnected) => {
      if (!settled) {
        if (failure instanceof BusError) fail(failure);
        else {
          fail(new BusError('broker_unavailable', `no broker at ${endpoint}` +
            (failure ? ` (${failure.code || failure.message})` : '') +
            (wasConnected ? '' : ': is busd running? (start it with `busd`)')));
        }
        return;
      }
      client._linkDown(failure, wasConnected);
    });
  });
}

module.exports = { connect, Client, Msg, Request, Subscription, typeName };
