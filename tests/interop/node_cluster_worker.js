// A JavaScript worker of tests/interop/node_cluster.test.js's Node cluster: answers every
// request with its pid, as bus-http-hello (the C++ worker beside it) does in X-Pid.
'use strict';
const http = require('node:http');

const server = http.createServer((req, res) => {
  res.setHeader('X-Pid', String(process.pid));
  res.end('Hello from JavaScript\n');
});
server.listen(Number(process.env.PORT), '127.0.0.1');
