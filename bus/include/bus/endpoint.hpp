// Where busd listens and clients connect (DESIGN.md "Security model"): a per-user runtime
// directory only its user can enter, $XDG_RUNTIME_DIR/bus or else /tmp/bus-$UID (mode 0700),
// holding `busd.zmq` (ZeroMQ ipc://) and `busd.sock` (unix://, the channel framing).
// BUS_ENDPOINT overrides the default endpoint for every program.
#pragma once

#include "bus/error.hpp"

#include <string>
#include <string_view>

namespace bus {

struct Endpoint {
    // ipc:// (ZeroMQ), unix:// (a stream socket, the channel framing), tcp:// (ZeroMQ). Not
    // `unix`: GCC and Clang predefine that as a macro in the GNU modes (-std=gnu++20, CMake's
    // default), where the enumerator would not compile.
    enum class Scheme { ipc, unix_socket, tcp };
    Scheme scheme;
    std::string address; // the path (ipc, unix) or host:port (tcp)

    std::string str() const;
};

// Parses "ipc://PATH", "unix://PATH" or "tcp://HOST:PORT".
Result<Endpoint> parse_endpoint(std::string_view text);

// The runtime directory, created 0700 if missing; an error if it exists with a wider mode or
// another owner (a socket in it would then not be private).
Result<std::string> runtime_dir();

// Where a client connects by default: BUS_ENDPOINT, else default_unix_endpoint().
Result<std::string> default_endpoint();
// unix://<runtime_dir>/busd.sock: the channel framing; the fastest link, it carries fds, and
// a broker that dies is noticed at once (docs/decisions.md).
Result<std::string> default_unix_endpoint();
// ipc://<runtime_dir>/busd.zmq: busd serves it too, for programs that speak ZeroMQ.
Result<std::string> default_ipc_endpoint();

// Where the busd serving `endpoint` (ipc:// or unix://) takes cluster workers it did not start
// (bus::cluster::Worker::join): busd.cluster.sock in the same directory. errc::bad_endpoint for
// tcp:// (workers join only on busd's own host, as its own user).
Result<std::string> cluster_socket_beside(std::string_view endpoint);
// The bearer token of that busd's HTTP face (busd --http): http.token in the same directory,
// mode 0600, made new each time busd starts.
Result<std::string> http_token_beside(std::string_view endpoint);

} // namespace bus
