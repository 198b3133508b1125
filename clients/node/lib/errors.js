// Errors: a BusError's `code` is the name of the C++ client's bus::errc
// (bus/include/bus/error.hpp), so one table of meanings serves every language:
//   no_responders, timeout, service_lost, broker_unavailable, expired, no_such_client,
//   invalid_subject, forbidden, message_too_large, fds_not_supported, channel_closed,
//   request_failed (the service answered with an error of its own: `errorName`, `detail`),
//   bad_frame / frame_too_large / truncated_frame (a broken busd), wrong_type, bad_endpoint.
// Two are this client's own: unknown_type (a type neither loaded nor in busd's registry) and
// the standard AbortError (a request's AbortSignal fired).
'use strict';

class BusError extends Error {
  constructor(code, message, extra) {
    super(message);
    this.name = 'BusError';
    this.code = code;
    if (extra) Object.assign(this, extra);
  }
}

// The error names busd and services put in an ERROR envelope's subject, as the C++ client
// reads them (error_from_wire_name in bus/src/core/error.cpp): a name not in this table is the
// service's own and reads back as request_failed.
const WIRE_NAMES = new Map([
  ['no_responders', 'no_responders'],
  ['service_lost', 'service_lost'],
  ['timeout', 'timeout'],
  ['no_such_client', 'no_such_client'],
  ['invalid_subject', 'invalid_subject'],
  ['forbidden', 'forbidden'],
  ['message_too_large', 'message_too_large'],
  ['fds_not_supported', 'fds_not_supported'],
  ['expired', 'expired'],
  ['bad_request', 'bad_frame'],
]);

// The error an ERROR envelope means, for a call to `what`.
function fromWire(name, detail, what) {
  const code = WIRE_NAMES.get(name) || 'request_failed';
  let message;
  if (code === 'request_failed') message = `${what} failed: ${name}${detail ? ': ' + detail : ''}`;
  else message = `${code}: ${what}${detail && detail !== what ? ' (' + detail + ')' : ''}`;
  return new BusError(code, message, { errorName: name, detail });
}

function abortError(signal) {
  const e = new Error('the request was aborted', { cause: signal && signal.reason });
  e.name = 'AbortError';
  e.code = 'ABORT_ERR';
  return e;
}

module.exports = { BusError, WIRE_NAMES, fromWire, abortError };
