// protobuf's JSON mapping of its well-known types, which protobufjs's toObject/fromObject do
// not apply (they see a Timestamp as {seconds, nanos}): so that a decoded message has the
// shape `bus sub --json` prints (C++'s JsonPrintOptions, Python's json_format) and a plain
// object to be sent may use it. Timestamps as RFC 3339 text, durations as "1.5s", the wrapper
// types as their value, Struct / Value / ListValue as the JSON they hold, FieldMask as
// "a.b,c". Registered as protobufjs wrappers, which apply to every type of that full name
// however it was loaded (a .proto, busd's FileDescriptorSet, protobufjs's bundled copies).
'use strict';

const protobuf = require('protobufjs');

const pad = (n, width) => String(n).padStart(width, '0');

// Nanoseconds as protobuf prints them: none, or 3, 6 or 9 digits.
function fraction(nanos) {
  if (nanos === 0) return '';
  if (nanos % 1e6 === 0) return '.' + pad(nanos / 1e6, 3);
  if (nanos % 1e3 === 0) return '.' + pad(nanos / 1e3, 6);
  return '.' + pad(nanos, 9);
}

// "2023-11-14T22:13:20.5Z" style text into [seconds, nanos]; null when it is not RFC 3339.
function parseTimestamp(text) {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$/.exec(text);
  if (!m) return null;
  const ms = Date.parse(m[1] + (m[3] === 'Z' ? 'Z' : m[3]));
  if (Number.isNaN(ms)) return null;
  return [Math.floor(ms / 1000), m[2] ? Number(m[2].padEnd(9, '0')) : 0];
}

const scalarWrapper = {
  fromObject(object) {
    return this.fromObject(object !== null && typeof object === 'object' ? object : { value: object });
  },
  toObject(message, options) {
    return this.toObject(message, { ...options, defaults: true }).value;
  },
};

const wrappers = {
  '.google.protobuf.Timestamp': {
    fromObject(object) {
      if (typeof object !== 'string') return this.fromObject(object);
      const parsed = parseTimestamp(object);
      if (!parsed) throw new TypeError(`${object} is not an RFC 3339 timestamp`);
      return this.create({ seconds: parsed[0], nanos: parsed[1] });
    },
    toObject(message) {
      const seconds = Number(message.seconds || 0);
      const nanos = message.nanos || 0;
      const text = new Date(seconds * 1000).toISOString().replace(/\.\d{3}Z$/, '');
      return `${text}${fraction(nanos)}Z`;
    },
  },
  '.google.protobuf.Duration': {
    fromObject(object) {
      if (typeof object !== 'string') return this.fromObject(object);
      const m = /^(-)?(\d+)(?:\.(\d{1,9}))?s$/.exec(object);
      if (!m) throw new TypeError(`${object} is not a duration such as "1.5s"`);
      const sign = m[1] ? -1 : 1;
      return this.create({ seconds: sign * Number(m[2]), nanos: sign * Number((m[3] || '').padEnd(9, '0')) });
    },
    toObject(message) {
      const seconds = Number(message.seconds || 0);
      const nanos = message.nanos || 0;
      const negative = seconds < 0 || nanos < 0;
      return `${negative ? '-' : ''}${Math.abs(seconds)}${fraction(Math.abs(nanos))}s`;
    },
  },
  '.google.protobuf.FieldMask': {
    fromObject(object) {
      return this.fromObject(typeof object === 'string' ? { paths: object ? object.split(',') : [] } : object);
    },
    toObject(message) {
      return (message.paths || []).join(',');
    },
  },
  '.google.protobuf.Struct': {
    fromObject(object) {
      if (object === null || typeof object !== 'object' || object instanceof protobuf.Message) {
        return this.fromObject(object);
      }
      const value = this.fields.fields.resolve().resolvedType;
      return this.fromObject({
        fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, value.fromObject(v)])),
      });
    },
    toObject(message, options) {
      return this.toObject(message, options).fields || {};
    },
  },
  '.google.protobuf.ListValue': {
    fromObject(object) {
      if (!Array.isArray(object)) return this.fromObject(object);
      const value = this.fields.values.resolve().resolvedType;
      return this.fromObject({ values: object.map((v) => value.fromObject(v)) });
    },
    toObject(message, options) {
      return this.toObject(message, options).values || [];
    },
  },
  '.google.protobuf.Value': {
    fromObject(object) {
      if (object instanceof protobuf.Message) return this.fromObject(object);
      if (object === null) return this.create({ null_value: 0, nullValue: 0 });
      switch (typeof object) {
        case 'number': return this.fromObject({ number_value: object, numberValue: object });
        case 'string': return this.fromObject({ string_value: object, stringValue: object });
        case 'boolean': return this.fromObject({ bool_value: object, boolValue: object });
        default:
          if (Array.isArray(object)) return this.fromObject({ list_value: object, listValue: object });
          return this.fromObject({ struct_value: object, structValue: object });
      }
    },
    toObject(message, options) {
      const kind = message.kind;
      if (!kind || kind === 'null_value' || kind === 'nullValue') return null;
      return this.toObject(message, { ...options, oneofs: false })[kind];
    },
  },
};
for (const name of ['DoubleValue', 'FloatValue', 'Int64Value', 'UInt64Value', 'Int32Value',
  'UInt32Value', 'BoolValue', 'StringValue', 'BytesValue']) {
  wrappers[`.google.protobuf.${name}`] = scalarWrapper;
}

Object.assign(protobuf.wrappers, wrappers);

// Whether a message of `type` can hold a well-known type at any depth: worked out once per
// type, so that a publish of a type without any (most) costs one map lookup, not a walk.
const reaches = new WeakMap();
function reachesWellKnown(type, visiting = new Set()) {
  if (reaches.has(type)) return reaches.get(type);
  if (wrappers[type.fullName]) return true;
  if (visiting.has(type)) return false; // a recursive type: decided where the cycle started
  visiting.add(type);
  const found = type.fieldsArray.some((field) => {
    const t = field.resolve().resolvedType;
    return t instanceof protobuf.Type && reachesWellKnown(t, visiting);
  });
  visiting.delete(type);
  if (visiting.size === 0 || found) reaches.set(type, found);
  return found;
}

// protobufjs's generated fromObject wants an object for every message field, so a plain object
// in the JSON mapping (a Timestamp as text, a Struct as any object...) is first rewritten, field
// by field, into what the wrappers above make of it. Returns `value` itself when nothing in it
// can be a well-known type.
function fromJsonShape(type, value) {
  if (value instanceof protobuf.Message) return value;
  if (wrappers[type.fullName]) return type.fromObject(value); // text, a number, any JSON
  if (value === null || typeof value !== 'object' || !reachesWellKnown(type)) return value;
  let out = value;
  for (const field of type.fieldsArray) {
    const t = field.resolvedType;
    const v = value[field.name];
    if (!(t instanceof protobuf.Type) || !reachesWellKnown(t) || v === undefined || v === null) continue;
    const one = (x) => fromJsonShape(t, x);
    let converted;
    if (field.map) converted = Object.fromEntries(Object.entries(v).map(([k, x]) => [k, one(x)]));
    else if (field.repeated && Array.isArray(v)) converted = v.map(one);
    else converted = one(v);
    if (converted !== v) {
      if (out === value) out = { ...value };
      out[field.name] = converted;
    }
  }
  return out;
}

module.exports = { fromJsonShape };
