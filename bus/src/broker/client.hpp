// A client as the router sees it, and the Link through which the router reaches it.
//
// Each endpoint (zmq_server.cpp, unix_server.cpp) gives every client it serves a Link of its
// own kind; the router (router.cpp) knows clients only through this header. A Link never
// waits: it takes a frame now or refuses it, and a refused frame is the recipient's loss alone.
// A ZeroMQ link may also refuse later, when the batch the frame joined is handed to ZeroMQ;
// it then gives each message's Queued back to Router::refused(), which undoes its counts.
#pragma once

#include "bus/broker.hpp"
#include "bus/unique_fd.hpp"
#include "bus/v1/broker.pb.h"
#include "bus/v1/envelope.pb.h"

#include <chrono>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace bus::broker {

// A message handed to a Link, and what the router must undo if it is refused after all: the
// counts of a delivery, a slow_consumer notice's report, a request in flight.
struct Queued {
    bool delivery = false;             // counted as sent to the client (Router::deliver)
    std::uint64_t told = 0;            // a slow_consumer notice: the drops it reported
    v1::SubjectStats* stats = nullptr; // a publish: its subject's counters
    std::uint64_t request = 0;         // a request: its broker id
    std::size_t bytes = 0;
};

class Link {
public:
    // How the client is connected: what $sys.clients reports, and what the router may rely on.
    enum class Kind { channel, zmq_ipc, zmq_tcp };

    explicit Link(Kind kind) : kind_(kind) {}
    virtual ~Link() = default;
    Link(const Link&) = delete;
    Link& operator=(const Link&) = delete;

    // Takes one frame (`header` serialized, its fd_count equal to fds.size()), or false when
    // the client's queue is full now.
    virtual bool send(std::string_view header, std::string_view payload, std::vector<UniqueFd> fds,
                      const Queued& queued) = 0;
    // Whether send() would take a frame now: a slow_consumer notice is not built for a link
    // that would refuse it.
    virtual bool ready() const { return true; }
    virtual std::size_t queued_bytes() const { return 0; }
    // The router is done with the client (it left, or was dropped): let go of the connection.
    virtual void close() = 0;

    Kind kind() const noexcept { return kind_; }
    bool carries_fds() const noexcept { return kind_ == Kind::channel; }
    // A ZeroMQ peer can vanish without a word: only its silence tells (Router::heartbeat).
    bool silent_when_gone() const noexcept { return kind_ != Kind::channel; }
    const char* transport() const noexcept {
        return kind_ == Kind::channel ? "unix" : kind_ == Kind::zmq_tcp ? "tcp" : "ipc";
    }

private:
    const Kind kind_;
};

struct Client {
    std::uint64_t num = 0;
    std::string id; // "c" + num, what other clients see as `source`
    std::unique_ptr<Link> link;
    std::string name;
    std::uint32_t pid = 0, uid = 0, gid = 0;
    std::int64_t connected_ns = 0;
    std::chrono::steady_clock::time_point last_seen;
    bool allowed = true;
    bool announced = false;
    // A bridge of busd's own (bridge/): what it publishes or requests is never routed to a
    // bridge (no loops between busds), and its service instances are used only when no local
    // instance serves the name (local first).
    bool bridge = false;
    const AccessRule* rule = nullptr; // restrictions, if a rule names it
    std::uint64_t msgs_in = 0, msgs_out = 0, bytes_in = 0, bytes_out = 0, dropped = 0;
    std::uint64_t dropped_unsent = 0;   // of `dropped`: taken by its link, then not sent
    std::uint64_t unreported_drops = 0; // told with the next message it can take
    bool slow_announced = false;        // `$sys.client.slow_consumer` said, drops not told yet
    struct Sub {
        std::string pattern, queue;
    };
    std::unordered_map<std::uint64_t, Sub> subs;
    std::set<std::string> services;
    std::set<std::string> queues; // shared-memory queues it announced
};

} // namespace bus::broker
