// A Node.js child of a C++ parent (bus::spawn with Serialization::node_json). Answers each
// message with {got: message}; writes to a passed socket and sends it back; with argv
// `flood N` it first sends N numbered messages.
'use strict';
const mode = process.argv[2];
if (mode === 'flood') {
  const n = Number(process.argv[3]);
  for (let i = 0; i < n; i++) process.send({ seq: i });
}
process.on('message', (msg, handle) => {
  if (handle) {
    handle.write('hello from node');
    process.send({ got: msg, socket: true }, handle);
  } else {
    process.send({ got: msg });
  }
});
