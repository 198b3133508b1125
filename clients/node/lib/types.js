// Typed messages, with protobufjs: the types this program knows (loaded from its .proto files
// or given as protobufjs Roots), the types busd's registry knows (fetched by name with
// `$sys.type`, which answers a FileDescriptorSet), and what a type sends to busd so that tools
// decode it (a FileDescriptorSet built from the protobufjs type, CONTROL register_type).
//
// Decoded messages have the shape of the CLI's `--json` (docs/decisions.md, 62): field names as
// in the .proto (keepCase), every field (defaults included), enums by name, 64-bit integers as
// strings, bytes as base64, well-known types (Timestamp, Duration, Struct...) in protobuf's
// JSON mapping (well_known.js).
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const protobuf = require('protobufjs');
const descriptor = require('protobufjs/ext/descriptor');
const { BusError } = require('./errors');
// Before any type is loaded: protobufjs applies its wrappers when a type is set up.
const { fromJsonShape } = require('./well_known');

const TYPE_URL_PREFIX = 'type.googleapis.com/';

const TO_OBJECT = {
  longs: String, enums: String, bytes: String, defaults: true, arrays: true, objects: true,
};

// busd's own messages (broker.proto), for the answers to $sys requests. The package carries a
// copy of proto/bus/v1 made when it is packed or installed (scripts/copy-protos.js); run from
// the repository (npm install ./clients/node links it), it reads the repository's proto/.
function busProtoDir() {
  for (const dir of [path.join(__dirname, '..', 'proto'), path.join(__dirname, '..', '..', '..', 'proto')]) {
    if (fs.existsSync(path.join(dir, 'bus', 'v1', 'broker.proto'))) return dir;
  }
  throw new BusError('unknown_type', 'bus.v1 .proto files not found: the package has no proto/ ' +
    '(run `npm run prepare` in clients/node) and is not inside the bus repository');
}

function loadProto(files, includeDirs) {
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => {
    if (path.isAbsolute(target) && fs.existsSync(target)) return target;
    for (const dir of [origin ? path.dirname(origin) : '', ...includeDirs]) {
      const candidate = path.resolve(dir, target);
      if (fs.existsSync(candidate)) return candidate;
    }
    return target; // protobufjs's bundled google/protobuf/*.proto, or its error naming the file
  };
  root.loadSync(files, { keepCase: true });
  return root.resolveAll();
}

class Types {
  constructor(request) {
    this.request = request;   // (service, payload) => Promise<Msg>, for $sys.type
    this.roots = [];          // searched in order
    this.fetched = new Map(); // name -> Promise<Type> of a fetch under way or done
    this.sets = new Map();    // Type -> its FileDescriptorSet, encoded
    this.busRoot = null;
  }

  // A protobufjs Root, or .proto files (with the directories their imports are found in).
  add(rootOrFiles, { includeDirs = [] } = {}) {
    if (rootOrFiles instanceof protobuf.Root) this.roots.push(rootOrFiles);
    else this.roots.push(loadProto([].concat(rootOrFiles), includeDirs));
    return this;
  }

  // The type named `name` (pkg.Msg) among the known ones, or null.
  find(name) {
    const full = name.startsWith('.') ? name : '.' + name;
    for (const root of this.roots) {
      const t = root.lookup(full);
      if (t instanceof protobuf.Type) return t;
    }
    // busd's own (its $sys answers), from bus's .proto files rather than its registry.
    if (name.startsWith('bus.v1.')) return this.bus(name);
    if (name === 'google.protobuf.FileDescriptorSet') return descriptor.FileDescriptorSet;
    const cached = this.fetched.get(name);
    return cached && cached.type ? cached.type : null;
  }

  // The type, from this program's or else from busd's registry (asked once per name).
  async resolve(name) {
    const known = this.find(name);
    if (known) return known;
    let entry = this.fetched.get(name);
    if (!entry) {
      entry = { type: null, promise: null };
      entry.promise = this.fetchType(name).then((t) => { entry.type = t; return t; },
        (e) => { this.fetched.delete(name); throw e; }); // asked again next time
      this.fetched.set(name, entry);
    }
    return entry.promise;
  }

  async fetchType(name) {
    let reply;
    try {
      reply = await this.request('$sys.type', Buffer.from(name));
    } catch (e) {
      if (e.code === 'no_responders') {
        throw new BusError('unknown_type', `type ${name} is not registered with busd ` +
          '(see `bus ls types`) and not loaded here (connect({ protos }) or bus.types.add())');
      }
      throw e;
    }
    let root;
    try {
      root = protobuf.Root.fromDescriptor(reply.data, { keepCase: true });
    } catch (e) {
      throw new BusError('wrong_type', `busd's descriptor of ${name} does not load: ${e.message}`);
    }
    const t = root.lookup('.' + name);
    if (!(t instanceof protobuf.Type)) {
      throw new BusError('wrong_type', `busd's descriptor of ${name} does not define it`);
    }
    return t;
  }

  // `type` (a protobufjs Type or a name) as a Type known now (sending is synchronous).
  sendable(type) {
    if (type instanceof protobuf.Type) return type;
    const t = this.find(String(type));
    if (!t) {
      throw new BusError('unknown_type', `unknown type ${type}: load its .proto ` +
        '(connect({ protos }), bus.types.add()) or fetch it from busd first ' +
        `(await bus.types.resolve('${type}'))`);
    }
    return t;
  }

  // The payload for `value` of `type`: a protobufjs message, or a plain object converted with
  // fromObject (which takes the JSON shape above).
  static encode(type, value) {
    const message = value instanceof protobuf.Message ? value : type.fromObject(fromJsonShape(type, value));
    return type.encode(message).finish();
  }

  static decode(type, data) {
    let message;
    try {
      message = type.decode(data);
    } catch (e) {
      throw new BusError('wrong_type', `the payload is not a ${typeName(type)}: ${e.message}`);
    }
    return type.toObject(message, TO_OBJECT);
  }

  // The FileDescriptorSet busd keeps for `type`: one file per package that the type and what
  // it refers to live in, each listing the files it needs, needed ones first (busd builds them
  // into a descriptor pool in order). protobufjs's own Root#toDescriptor writes files without
  // their dependencies, which a pool refuses.
  descriptorSet(type) {
    let set = this.sets.get(type);
    if (set) return set;
    const packages = new Map(); // namespace -> { tops: Set, deps: Set<namespace> }
    const seen = new Set();
    const entry = (ns) => {
      let e = packages.get(ns);
      if (!e) packages.set(ns, e = { tops: new Set(), deps: new Set() });
      return e;
    };
    const visit = (t) => {
      if (seen.has(t)) return;
      seen.add(t);
      let top = t;
      while (top.parent instanceof protobuf.Type) top = top.parent;
      const ns = top.parent;
      entry(ns).tops.add(top);
      if (!(t instanceof protobuf.Type)) return;
      for (const field of t.fieldsArray) {
        field.resolve();
        if (field.resolvedType) {
          let other = field.resolvedType;
          while (other.parent instanceof protobuf.Type) other = other.parent;
          if (other.parent !== ns) entry(ns).deps.add(other.parent);
          visit(field.resolvedType);
        }
      }
      for (const nested of t.nestedArray) if (nested instanceof protobuf.Type || nested instanceof protobuf.Enum) visit(nested);
    };
    visit(type);
    const fileName = (ns) => (ns.fullName.replace(/^\./, '').replace(/\./g, '/') || 'root') + '.node.proto';
    const files = [], done = new Set();
    const emit = (ns) => {
      if (done.has(ns)) return;
      done.add(ns);
      const e = packages.get(ns);
      for (const dep of e.deps) emit(dep);
      const file = descriptor.FileDescriptorProto.create({
        name: fileName(ns),
        syntax: 'proto3',
        dependency: [...e.deps].map(fileName),
      });
      if (!(ns instanceof protobuf.Root)) file.package = ns.fullName.replace(/^\./, '');
      for (const top of e.tops) {
        if (top instanceof protobuf.Type) file.messageType.push(mapEntriesNamed(top, top.toDescriptor('proto3')));
        else file.enumType.push(top.toDescriptor());
      }
      files.push(file);
    };
    for (const ns of packages.keys()) emit(ns);
    set = Buffer.from(descriptor.FileDescriptorSet.encode({ file: files }).finish());
    this.sets.set(type, set);
    return set;
  }

  // busd's own messages, for $sys answers (bus.v1.ClientList, ...).
  bus(name) {
    if (!this.busRoot) {
      const dir = busProtoDir();
      this.busRoot = loadProto([path.join(dir, 'bus/v1/broker.proto')], [dir]);
    }
    const t = this.busRoot.lookup('.' + name);
    return t instanceof protobuf.Type ? t : null;
  }
}

// protobufjs names a map field's entry type after the field ("notes" -> "Notes"); protobuf's
// descriptor pool (busd's, the CLI's) refuses any name but protoc's, "NotesEntry". Renames the
// entries of `type`'s descriptor `d` and of its nested types', and the fields that use them.
function mapEntriesNamed(type, d) {
  for (const field of type.fieldsArray) {
    if (!field.map) continue;
    const protoName = field.protoName || field.name;
    const entry = protoName.split('_').map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join('') + 'Entry';
    const fd = d.field.find((f) => f.number === field.id);
    const nested = d.nestedType.find((n) => n.name === fd.typeName && n.options && n.options.mapEntry);
    if (nested) nested.name = entry;
    fd.typeName = entry;
  }
  for (const nested of type.nestedArray) {
    if (!(nested instanceof protobuf.Type)) continue;
    const nd = d.nestedType.find((n) => n.name === nested.name && !(n.options && n.options.mapEntry));
    if (nd) mapEntriesNamed(nested, nd);
  }
  return d;
}

function typeName(type) { return type.fullName.replace(/^\./, ''); }
function typeUrl(type) { return TYPE_URL_PREFIX + typeName(type); }
function nameOfUrl(url) { return url.startsWith(TYPE_URL_PREFIX) ? url.slice(TYPE_URL_PREFIX.length) : url; }

module.exports = { Types, typeName, typeUrl, nameOfUrl, protobuf, TYPE_URL_PREFIX };
