// The unix:// wire: frames of `u32 length (LE)` + a serialized bus.v1.Envelope
// (proto/bus/v1/envelope.proto, docs/protocol.md), and the few control bodies a client
// exchanges with busd (Hello, Welcome, Subscribe, Unsubscribe, Serve, SlowConsumer from
// proto/bus/v1/broker.proto).
//
// Why hand-written and not protobufjs: every message sent or received goes through this code,
// and the Envelope is a flat message of varints and bytes. Writing it straight into the
// outgoing chunk (no intermediate object, no Writer with its own buffer list, one copy of the
// payload) and reading it in one pass over the received chunk (the payload is a view of it,
// never copied) is what lets this client keep up with busd. protobufjs is still used for the
// users' payloads and for busd's $sys answers (lib/types.js), where a schema matters. The field
// numbers below are envelope.proto's and broker.proto's; tests check them against those files.
'use strict';

const { BusError } = require('./errors');

const KIND = Object.freeze({
  UNSPECIFIED: 0, DATA: 1, PUBLISH: 2, REQUEST: 3, REPLY: 4, DIRECT: 5, ERROR: 6, CONTROL: 7,
  EVENT: 8,
});


// --- sizes ------------------------------------------------------------------------------------

function varintSize(n) {
  if (n < 0x80) return 1;
  if (n < 0x4000) return 2;
  if (n < 0x200000) return 3;
  if (n < 0x10000000) return 4;
  let size = 4;
  n = Math.floor(n / 0x10000000);
  while (n > 0) { size++; n = Math.floor(n / 128); }
  return size;
}

// A non-negative integer (exact up to 2^53; deadlines in ns are near 2^61, where a double is
// exact to 256 ns, which is below what a deadline means).
function writeVarint(buf, off, n) {
  while (n >= 0x80) {
    buf[off++] = (n % 128) | 0x80;
    n = Math.floor(n / 128);
  }
  buf[off++] = n;
  return off;
}

function bytesField(len) { return 1 + varintSize(len) + len; }

// The strings an envelope carries are ASCII in practice (subjects, client ids, type URLs), but
// headers may not be: byteLength is the exact UTF-8 size either way.
function strLen(s) { return s ? Buffer.byteLength(s) : 0; }

function writeBytes(buf, off, tag, s, len) {
  buf[off++] = tag;
  off = writeVarint(buf, off, len);
  if (typeof s === 'string') off += buf.utf8Write(s, off, len);
  else { buf.set(s, off); off += len; }
  return off;
}

// --- encoding ---------------------------------------------------------------------------------

// The frame's body size (the Envelope) for `e`: { kind, subject, typeUrl, payload (Buffer),
// id, correlationId, deadlineNs, headers ([key, value] pairs), subjectLen, typeUrlLen }.
// Lengths are computed once here and kept on `e` for encodeInto().
function envelopeSize(e) {
  let n = 2; // kind
  if (e.subject) n += bytesField(e.subjectLen = strLen(e.subject));
  if (e.typeUrl) n += bytesField(e.typeUrlLen = strLen(e.typeUrl));
  if (e.id) n += 1 + varintSize(e.id);
  if (e.correlationId) n += 1 + varintSize(e.correlationId);
  if (e.deadlineNs) n += 1 + varintSize(e.deadlineNs);
  if (e.headers) {
    const sizes = e.headerSizes = [];
    for (const [k, v] of e.headers) {
      const kl = strLen(k), vl = strLen(v);
      const inner = (kl ? bytesField(kl) : 0) + (vl ? bytesField(vl) : 0);
      sizes.push(kl, vl, inner);
      n += bytesField(inner);
    }
  }
  if (e.payload && e.payload.length) n += bytesField(e.payload.length);
  return n;
}

// Writes the frame (length prefix and Envelope, payload last as busd writes it) at `off`;
// returns the offset after it. `body` is envelopeSize(e).
function encodeInto(buf, off, e, body) {
  buf.writeUInt32LE(body, off);
  off += 4;
  buf[off++] = 0x08; // kind = 1
  buf[off++] = e.kind;
  if (e.subject) off = writeBytes(buf, off, 0x12, e.subject, e.subjectLen);
  if (e.typeUrl) off = writeBytes(buf, off, 0x1a, e.typeUrl, e.typeUrlLen);
  if (e.id) { buf[off++] = 0x28; off = writeVarint(buf, off, e.id); }
  if (e.correlationId) { buf[off++] = 0x30; off = writeVarint(buf, off, e.correlationId); }
  if (e.deadlineNs) { buf[off++] = 0x48; off = writeVarint(buf, off, e.deadlineNs); }
  if (e.headers) {
    let i = 0;
    for (const [k, v] of e.headers) {
      const kl = e.headerSizes[i], vl = e.headerSizes[i + 1], inner = e.headerSizes[i + 2];
      i += 3;
      buf[off++] = 0x52; // headers = 10
      off = writeVarint(buf, off, inner);
      if (kl) off = writeBytes(buf, off, 0x0a, k, kl);
      if (vl) off = writeBytes(buf, off, 0x12, v, vl);
    }
  }
  if (e.payload && e.payload.length) off = writeBytes(buf, off, 0x22, e.payload, e.payload.length);
  return off;
}

// --- decoding ---------------------------------------------------------------------------------

function bad(what) {
  return new BusError('bad_frame', `busd sent a frame that is not a bus.v1.Envelope (${what})`);
}

// The read position of the decoders below (one module-level cursor rather than an object per
// message: decoding is synchronous and never nested across messages).
const r = { pos: 0 };

// Reads a varint at r.pos (at most 10 bytes, as protobuf); exact up to 2^53.
function readVarint(buf, end) {
  let b = buf[r.pos];
  if (r.pos < end && b < 0x80) { r.pos++; return b; }
  let value = 0, mul = 1;
  for (let i = 0; i < 10; i++) {
    if (r.pos >= end) throw bad('truncated varint');
    b = buf[r.pos++];
    value += (b & 0x7f) * mul;
    if (b < 0x80) return value;
    mul *= 128;
  }
  throw bad('varint over 10 bytes');
}

function readLength(buf, end) {
  const n = readVarint(buf, end);
  if (n > end - r.pos) throw bad('a field longer than its frame');
  return n;
}

function skip(buf, end, wire) {
  switch (wire) {
    case 0: readVarint(buf, end); return;
    case 1: r.pos += 8; break;
    case 2: r.pos += readLength(buf, end); return;
    case 5: r.pos += 4; break;
    default: throw bad(`wire type ${wire}`);
  }
  if (r.pos > end) throw bad('truncated field');
}

// Leaves r.pos at `end`, where the enclosing Envelope goes on.
function decodeHeader(buf, start, end) {
  r.pos = start;
  let key = '', value = '';
  while (r.pos < end) {
    const tag = readVarint(buf, end);
    if (tag === 0x0a || tag === 0x12) {
      const n = readLength(buf, end);
      const s = buf.utf8Slice(r.pos, r.pos + n);
      r.pos += n;
      if (tag === 0x0a) key = s; else value = s;
    } else skip(buf, end, tag & 7);
  }
  return [key, value];
}

// The Envelope in buf[start, end): a plain object whose payload is a view of `buf`.
function decodeEnvelope(buf, start, end) {
  const e = {
    kind: 0, subject: '', typeUrl: '', payload: EMPTY, id: 0, correlationId: 0, source: '',
    deadlineNs: 0, headers: null, fdCount: 0, subscriptionId: 0, monitoredKind: 0,
  };
  r.pos = start;
  while (r.pos < end) {
    const tag = readVarint(buf, end);
    const field = Math.floor(tag / 8), wire = tag & 7;
    if (wire === 0) {
      const v = readVarint(buf, end);
      switch (field) {
        case 1: e.kind = v; break;
        case 5: e.id = v; break;
        case 6: e.correlationId = v; break;
        case 9: e.deadlineNs = v; break;
        case 11: e.fdCount = v; break;
        case 12: e.subscriptionId = v; break;
        case 13: e.monitoredKind = v; break;
        default: break;
      }
    } else if (wire === 2) {
      const n = readLength(buf, end);
      const from = r.pos;
      r.pos += n;
      switch (field) {
        case 2: e.subject = buf.utf8Slice(from, r.pos); break;
        case 3: e.typeUrl = buf.utf8Slice(from, r.pos); break;
        case 4: e.payload = buf.subarray(from, r.pos); break;
        case 8: e.source = buf.utf8Slice(from, r.pos); break;
        case 10: (e.headers || (e.headers = [])).push(decodeHeader(buf, from, r.pos)); break;
        default: break; // reply_to, and fields added later
      }
    } else if (field >= 1 && field <= 13) {
      throw bad(`field ${field} with wire type ${wire}`);
    } else {
      skip(buf, end, wire);
    }
  }
  return e;
}

const EMPTY = Buffer.alloc(0);

// Splits a byte stream into frames. push() takes each chunk as it arrives and calls
// onFrame(buf, start, end) for every complete body; a length over `maxBody` throws
// frame_too_large before anything of that frame is kept, so a broken peer cannot make this
// buffer grow past one frame.
class FrameReader {
  constructor(maxBody, onFrame) {
    this.maxBody = maxBody;
    this.onFrame = onFrame;
    this.pending = null; // the start of a frame, when a chunk ended inside it
  }

  push(chunk) {
    let buf = chunk;
    if (this.pending) {
      buf = Buffer.concat([this.pending, chunk]);
      this.pending = null;
    }
    let off = 0;
    const len = buf.length;
    while (len - off >= 4) {
      const body = buf.readUInt32LE(off);
      if (body > this.maxBody) {
        throw new BusError('frame_too_large',
          `busd sent a frame of ${body} bytes, over this client's limit of ${this.maxBody} ` +
          '(maxMessageSize)');
      }
      if (len - off - 4 < body) break;
      this.onFrame(buf, off + 4, off + 4 + body);
      off += 4 + body;
    }
    if (off < len) this.pending = off === 0 ? buf : buf.subarray(off);
  }

  // Bytes of a frame begun and not finished (the peer closed mid-frame if nonzero at the end).
  get partial() { return this.pending ? this.pending.length : 0; }
}

// --- control bodies ---------------------------------------------------------------------------

// A small message of bytes and varint fields: [[field, value], ...], value a string, Buffer or
// non-negative integer; zero and empty values are left out, as protobuf does.
function encodeFields(fields) {
  let n = 0;
  for (const [, v] of fields) {
    if (typeof v === 'number') { if (v) n += 1 + varintSize(v); } else if (v && v.length) n += bytesField(strLen(v) || v.length);
  }
  const buf = Buffer.allocUnsafe(n);
  let off = 0;
  for (const [f, v] of fields) {
    if (typeof v === 'number') {
      if (v) { buf[off++] = f << 3; off = writeVarint(buf, off, v); }
    } else if (v && v.length) {
      off = writeBytes(buf, off, (f << 3) | 2, v, typeof v === 'string' ? strLen(v) : v.length);
    }
  }
  return buf;
}

// The fields of a small message: { field: value } with strings for bytes and numbers for
// varints (the last of a repeated field wins, as protobuf reads a singular one).
function decodeFields(buf) {
  const out = {};
  r.pos = 0;
  const end = buf.length;
  while (r.pos < end) {
    const tag = readVarint(buf, end);
    const field = Math.floor(tag / 8), wire = tag & 7;
    if (wire === 0) out[field] = readVarint(buf, end);
    else if (wire === 2) {
      const n = readLength(buf, end);
      out[field] = buf.utf8Slice(r.pos, r.pos + n);
      r.pos += n;
    } else skip(buf, end, wire);
  }
  return out;
}

const control = {
  hello: (name) => encodeFields([[1, name]]),
  subscribe: (sid, pattern, queue) => encodeFields([[1, sid], [2, pattern], [3, queue]]),
  unsubscribe: (sid) => encodeFields([[1, sid]]),
  serve: (service) => encodeFields([[1, service]]),
  welcome(buf) {
    const f = decodeFields(buf);
    return { clientId: f[1] || '', brokerId: f[2] || '', version: f[3] || '', heartbeatMs: f[4] || 0 };
  },
  slowConsumer: (buf) => ({ dropped: decodeFields(buf)[1] || 0 }),
};

module.exports = {
  KIND, envelopeSize, encodeInto, decodeEnvelope, FrameReader, control, EMPTY,
};
