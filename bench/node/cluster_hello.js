// The Node peers of bench/run cluster: an HTTP "hello" like bus-http-hello, either under Node's
// cluster module (round-robin, the default on Linux) with N workers, or as one process.
//
//   node cluster_hello.js cluster 2 PORT
//   node cluster_hello.js single 1 PORT
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');

const [mode, count, port] = process.argv.slice(2);
const body = 'Hello, world!\n';

function serve() {
  http.createServer((req, res) => {
    res.writeHead(200, {'Content-Type': 'text/plain', 'Content-Length': body.length});
    res.end(body);
  }).listen(Number(port), '127.0.0.1');
}

if (mode === 'cluster' && cluster.isPrimary) {
  cluster.schedulingPolicy = cluster.SCHED_RR;
  for (let i = 0; i < Number(count); i++) cluster.fork();
  process.on('SIGTERM', () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else {
  serve();
}
