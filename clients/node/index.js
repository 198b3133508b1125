// @bus/client: the Node.js client of bus (README.md here; docs/protocol.md is the wire).
'use strict';

const { connect, Client, Msg, Request, Subscription } = require('./lib/client');
const { BusError } = require('./lib/errors');
const { defaultEndpoint } = require('./lib/endpoint');
const { protobuf } = require('./lib/types');

module.exports = { connect, defaultEndpoint, BusError, Client, Msg, Request, Subscription, protobuf };
