// protobuf's JSON mapping of its well-known types, as the CLI (C++) and Python print them:
// decoded messages compare equal across the three languages (tests/languages).
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const protobuf = require('protobufjs');
const { fromJsonShape } = require('../lib/well_known');

// protobufjs resolves google/protobuf/*.proto to the copies it bundles.
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bus-well-known-'));
fs.writeFileSync(path.join(dir, 'all.proto'), `
syntax = "proto3";
package t;
import "google/protobuf/timestamp.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/wrappers.proto";
import "google/protobuf/field_mask.proto";
message Plain { string s = 1; Plain next = 2; repeated Plain more = 3; }
message Deep { Plain plain = 1; Deep again = 2; google.protobuf.Timestamp at = 3; }
message All {
  google.protobuf.Timestamp at = 1;
  google.protobuf.Duration took = 2;
  google.protobuf.Struct meta = 3;
  google.protobuf.Int64Value count = 4;
  google.protobuf.StringValue name = 5;
  google.protobuf.FieldMask mask = 6;
}`);
const root = new protobuf.Root().loadSync(path.join(dir, 'all.proto'), { keepCase: true });
fs.rmSync(dir, { recursive: true });
const All = root.lookupType('t.All');
const opts = { longs: String, enums: String, bytes: String, defaults: true, objects: true, arrays: true };
const fromObject = (object) => All.fromObject(fromJsonShape(All, object));
const roundTrip = (object) => All.toObject(All.decode(All.encode(fromObject(object)).finish()), opts);

test('the canonical JSON of each well-known type, both ways', () => {
  const canonical = {
    at: '2023-11-14T22:13:20.005Z',
    took: '-1.500s',
    meta: { a: 1, b: 'x', c: [true, null, { d: 2 }] },
    count: '9007199254740993',
    name: 'ada',
    mask: 'a.b,c',
  };
  assert.deepEqual(roundTrip(canonical), canonical);
});

test('fractions of a second in groups of three digits, as protobuf prints them', () => {
  const at = (seconds, nanos) => All.toObject(All.fromObject({ at: { seconds, nanos } }), opts).at;
  assert.equal(at(0, 0), '1970-01-01T00:00:00Z');
  assert.equal(at(1700000000, 500000000), '2023-11-14T22:13:20.500Z');
  assert.equal(at(1700000000, 1000), '2023-11-14T22:13:20.000001Z');
  assert.equal(at(1700000000, 1), '2023-11-14T22:13:20.000000001Z');
  assert.equal(All.toObject(All.fromObject({ took: { seconds: 3, nanos: 0 } }), opts).took, '3s');
});

test('text that is not the mapping is refused, not misread', () => {
  assert.throws(() => fromObject({ at: 'yesterday' }), /RFC 3339/);
  assert.throws(() => fromObject({ took: '5 minutes' }), /duration/);
});

test('a type with no well-known type inside is sent as given, not rewritten (the common case)', () => {
  const Plain = root.lookupType('t.Plain');
  const value = { s: 'a', next: { s: 'b', next: { s: 'c' } }, more: [{ s: 'd' }] };
  assert.equal(fromJsonShape(Plain, value), value);
  // A recursive type that does reach one is rewritten where it does, at any depth.
  const Deep = root.lookupType('t.Deep');
  const shaped = fromJsonShape(Deep, { plain: value, again: { at: '1970-01-01T00:00:01Z' } });
  assert.equal(shaped.plain, value);
  assert.equal(Deep.toObject(Deep.fromObject(shaped), opts).again.at, '1970-01-01T00:00:01Z');
});
