// Copies bus's own .proto files (the repository's proto/bus/v1) into this package's proto/,
// when it is packed (npm pack, prepack) or installed from the repository (prepare): the client
// reads bus.v1's messages from there to decode busd's $sys answers. Run from a package that
// already has its copy (installed from a tarball), it keeps that copy.
'use strict';

const fs = require('node:fs');
const path = require('node:path');

const from = path.join(__dirname, '..', '..', '..', 'proto', 'bus', 'v1');
const to = path.join(__dirname, '..', 'proto', 'bus', 'v1');
if (!fs.existsSync(from)) {
  if (fs.existsSync(to)) process.exit(0);
  console.error(`copy-protos: neither ${from} nor ${to} exists`);
  process.exit(1);
}
fs.mkdirSync(to, { recursive: true });
// Each file renamed into place: a client reading the copy meanwhile (tests run beside `npm
// pack`) sees the old file or the new one, never half of one.
for (const file of fs.readdirSync(from)) {
  if (!file.endsWith('.proto')) continue;
  const temp = path.join(to, `.${file}.${process.pid}`);
  fs.copyFileSync(path.join(from, file), temp);
  fs.renameSync(temp, path.join(to, file));
}
