// How bus reports failure.
//
// - Ordinary events of a non-blocking loop (EAGAIN, a peer hanging up, bad input from a
//   peer) are values, not exceptions: a std::error_code passed first to a completion handler
//   (Node's error-first callback), or a Result<T> from a factory function.
// - A failed syscall keeps its errno: std::error_code(errno, std::system_category()).
// - Conditions that are bus's own (a frame over the limit, fds that don't match a frame)
//   are bus::errc values in the "bus" category.
// - Exceptions are kept for programming errors and for Result::value() on an error.
// - The library never logs; the programs decide what to print.
#pragma once

#include <boost/outcome/std_result.hpp>
#include <string_view>
#include <system_error>

namespace bus {

enum class errc {
    // framing and decoding (a broken or malicious peer)
    frame_too_large = 1, // a length prefix or JSON line over the configured limit
    bad_frame,           // a complete frame whose Envelope does not parse
    truncated_frame,     // the peer closed in the middle of a frame
    fd_mismatch,         // a frame claims more fds than arrived with it
    unexpected_fds,      // fds arrived that no frame claims
    too_many_fds,        // a message carries more fds than the limit
    control_truncated,   // MSG_CTRUNC: the kernel dropped some of the fds sent to us
    bad_json,            // Node mode: a line that is not one JSON text
    // use
    channel_closed,            // send() on a channel that is closed or closing
    fds_not_supported,         // this link or mode cannot carry these fds
    handle_not_delivered,      // Node mode: the peer NACKed a handle past the retries
    no_parent_channel,         // from_parent() in a process started without a channel
    unsupported_serialization, // NODE_CHANNEL_SERIALIZATION_MODE=advanced
    wrong_type,                // payload is not of the requested type
    // the bus (broker and client)
    no_responders,      // a request for a service nobody serves
    timeout,            // no reply, or no room or record, before the deadline
    service_lost,       // the instance handling a request went away
    broker_unavailable, // no broker on the endpoint, or it went away mid-request
    no_such_client,     // a direct message to a client that is not connected
    invalid_subject,    // not a valid subject or pattern
    forbidden,          // not allowed by the broker's access rules ($sys is the broker's)
    message_too_large,  // over the broker's limit
    bad_endpoint,       // an endpoint that is not ipc://, unix:// or tcp://
    request_failed,     // the service answered the request with an error
    no_server_key,      // a tcp:// endpoint without the broker's CURVE public key
    // shared-memory queues (bus::shm)
    full,             // no room for the record now (never overwrites)
    empty,            // no record to read now
    peer_dead,        // the other side of the queue died and nobody live replaced it
    layout_mismatch,  // the segment is not a queue of this build's version and layout
    record_too_large, // the record could never fit in the ring
    queue_in_use,     // that end of the queue is held by a live process (or all slots are)
    bad_record,       // a record header in the ring is invalid: a peer corrupted the queue
    // the bus again (added later; the values above keep theirs)
    expired,     // a request whose deadline passed before busd could hand it to a service
    peer_closed, // shm: the other side of the queue left cleanly (every record delivered)
};

// bus's errors. Those that match a generic condition compare equal to it:
// errc::timeout == std::errc::timed_out, forbidden == permission_denied, the *_too_large ==
// message_size, fds_not_supported == operation_not_supported, bad_endpoint and invalid_subject
// == invalid_argument, peer_closed == broken_pipe (EPIPE: the reader or writer went away).
const std::error_category& bus_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), bus_category()};
}

// The names of the errors busd sends a requester (an error envelope's subject): one table for
// busd and clients. Errors without a name of their own go as "bad_request" (read back as
// bad_frame); a name not in the table is a service's own (read back as request_failed).
std::string_view error_wire_name(errc e) noexcept;
std::error_code error_from_wire_name(std::string_view name) noexcept;

// The current errno as an error_code.
std::error_code last_error() noexcept;

template <class T>
using Result = boost::outcome_v2::std_result<T>;

} // namespace bus

template <>
struct std::is_error_code_enum<bus::errc> : std::true_type {};
