// Where the user's busd is, as the C++ client finds it (bus/src/core/endpoint.cpp):
// BUS_ENDPOINT, else unix://<runtime dir>/busd.sock, the runtime dir being
// $XDG_RUNTIME_DIR/bus or /tmp/bus-$UID. The directory is checked the same way: made 0700 if
// missing, and refused if someone else made it or opened it up (its socket would be theirs).
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { BusError } = require('./errors');

function runtimeDir() {
  const xdg = process.env.XDG_RUNTIME_DIR;
  const dir = xdg ? path.join(xdg, 'bus') : `/tmp/bus-${process.getuid()}`;
  try { fs.mkdirSync(dir, { mode: 0o700 }); } catch (e) { if (e.code !== 'EEXIST') throw e; }
  const st = fs.lstatSync(dir);
  if (!st.isDirectory() || st.uid !== process.getuid() || (st.mode & 0o077) !== 0) {
    throw new BusError('forbidden', `${dir} is not a private directory of this user ` +
      '(mode 0700, owned by us): its busd socket cannot be trusted');
  }
  return dir;
}

function defaultEndpoint() {
  if (process.env.BUS_ENDPOINT) return process.env.BUS_ENDPOINT;
  return 'unix://' + path.join(runtimeDir(), 'busd.sock');
}

// The socket path of a unix:// endpoint; this client speaks no other scheme.
function socketPath(endpoint) {
  const m = /^([a-z]+):\/\/(.+)$/.exec(endpoint);
  if (!m || m[2].includes('\0')) throw new BusError('bad_endpoint', `not an endpoint: '${endpoint}'`);
  if (m[1] !== 'unix') {
    throw new BusError('bad_endpoint', `the Node client speaks unix:// only, not ${m[1]}:// ` +
      `('${endpoint}'); busd serves unix://<runtime dir>/busd.sock by default`);
  }
  return m[2];
}

module.exports = { runtimeDir, defaultEndpoint, socketPath };
