// The systems broker-bench compares, behind one interface: each starts its server (if it has
// one) in the bench, and plays the four roles in forked processes.
//
// Every role is written the way a careful user of that system would write it: publishers
// batch and stop only when their transport pushes back; subscribers read everything a wake-up
// brings. What each sends per message, and how it knows it is set up, is in its .cpp file.
#pragma once

#include "harness.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace bench::broker {

// What the server is started for: some systems serve pub/sub and requests differently
// (zmq_proxy: XSUB/XPUB or ROUTER/DEALER).
enum class Pattern { pubsub, reqrep };

struct PubSpec {
    std::size_t size = 64;
    double seconds = 1;
    double rate = 0;         // msgs/s; 0: as fast as the transport takes them
    int subscribers = 1;     // how many (healthy + stalled) must be subscribed before sending
    bool time_sends = false; // time every single send call (the stall case)
};

struct PubResult {
    std::uint64_t sent = 0;
    double start = 0, end = 0; // first and last send (now_s())
    double max_send_ms = 0;    // the longest single send/publish call (time_sends only)
    double max_blocked_ms = 0; // ... of those during which the publisher slept (time_sends)
    double max_wait_ms = 0;    // the longest time the transport held the publisher up
    std::uint64_t refused = 0; // sends the transport refused (not counted in `sent`)
};

struct SubSpec {
    std::size_t size = 64;
    int index = 0;        // distinct per subscriber of a case
    int of = 1;           // how many subscribers (healthy + stalled) the case has
    bool stalled = false; // subscribes, says ready, then never reads
};

struct SubResult {
    std::uint64_t count = 0, malformed = 0;
    double first = 0, last = 0;     // first and last arrival (now_s())
    double max_gap_ms = 0;          // the longest time between two arrivals
    std::uint64_t told_dropped = 0; // slow-consumer notices (bus)
    bool disconnected = false;      // the broker cut it off
};

struct ReqSpec {
    std::size_t size = 64;
    double seconds = 1;
    double warmup = 0.15; // seconds of requests not counted
    int in_flight = 1;
};

struct ReqResult {
    std::uint64_t count = 0; // round trips completed in the measured window
    double seconds = 0;
    double p50_us = 0, p99_us = 0;
};

nlohmann::json to_json(const PubResult&);
nlohmann::json to_json(const SubResult&);
nlohmann::json to_json(const ReqResult&);
PubResult pub_result(const nlohmann::json&);
SubResult sub_result(const nlohmann::json&);
ReqResult req_result(const nlohmann::json&);

class Peer {
public:
    virtual ~Peer() = default;
    virtual std::string name() const = 0;
    virtual bool has_broker() const { return true; }
    // Whether it takes part in the cases of `pattern` (unix-relay: request/reply only).
    virtual bool serves(Pattern) const { return true; }

    // In the bench. `dir` is a fresh private directory for this server's sockets.
    virtual void start(Pattern pattern, const std::string& dir) = 0;
    virtual void stop() = 0;
    // The process whose memory the stall case watches; 0 if none.
    virtual pid_t broker_pid() const = 0;

    // In forked processes, after start().
    virtual void subscriber(const SubSpec& spec, RoleIo& io) = 0;
    virtual void publisher(const PubSpec& spec, RoleIo& io) = 0;
    virtual void responder(RoleIo& io) = 0;
    virtual void requester(const ReqSpec& spec, RoleIo& io) = 0;
};

struct Paths {
    std::string busd;            // build-bench/bin/busd
    std::string nats_server;     // nats-server
    std::string dbus_daemon;     // dbus-daemon
    std::string dbus_launch;     // dbus-broker-launch
    std::string socket_activate; // systemd-socket-activate
};

// "ipc" or "unix"; `busd_args` go to busd after its endpoints (http-bench: --http). Its output
// goes to busd.log in the run's directory.
std::unique_ptr<Peer> make_bus_peer(const Paths& paths, const std::string& transport,
                                    std::vector<std::string> busd_args = {});
std::unique_ptr<Peer> make_zmq_direct_peer();
std::unique_ptr<Peer> make_zmq_proxy_peer();
std::unique_ptr<Peer> make_nats_peer(const Paths& paths);
// "dbus-daemon" or "dbus-broker"
std::unique_ptr<Peer> make_dbus_peer(const Paths& paths, const std::string& which);
// rearm: epoll_ctl(MOD) after every read, as Asio does ("unix-relay-rearm").
std::unique_ptr<Peer> make_relay_peer(bool rearm);

// --- shared by the roles ----------------------------------------------------------------------

// A subscriber's bookkeeping, and when it is finished: after the bench says "done N" (the
// publisher sent N), once N arrived, or nothing arrived for `quiet` seconds (what was dropped
// will not come), or `cap` seconds passed.
class SubscriberCounter {
public:
    explicit SubscriberCounter(std::size_t size) : size_(size) {}
    void on_message(std::size_t payload_size) {
        const double now = now_s();
        if (result_.count++ == 0)
            result_.first = now;
        else if (const double gap = (now - result_.last) * 1000; gap > result_.max_gap_ms)
            result_.max_gap_ms = gap;
        result_.last = now;
        result_.malformed += payload_size != size_;
    }
    void on_control(const std::string& line);
    bool finished() const;
    // How long a role may sleep before it should ask finished() again.
    int poll_ms() const { return done_ ? 10 : 100; }
    SubResult& result() { return result_; }

    static constexpr double quiet = 0.25;
    static constexpr double cap = 8;

private:
    std::size_t size_;
    SubResult result_;
    bool done_ = false;
    std::uint64_t expected_ = 0;
    double done_at_ = 0;
};

// A requester's round trips, kept the same way for every peer: requests are numbered as they go
// out; those sent from `warmup` seconds after the start on are timed, and none is sent after
// `seconds` more.
class RoundTrips {
public:
    explicit RoundTrips(const ReqSpec& spec);
    // A request goes out now: its number.
    std::uint64_t sent();
    // The reply to request `seq` arrived now; throws if no such request went out. True while
    // there is time for another request.
    bool answered(std::uint64_t seq);
    int outstanding() const { return outstanding_; }
    ReqResult result();

private:
    double measure_from_, deadline_, last_done_;
    std::vector<double> sent_at_, samples_;
    int outstanding_ = 0;
    std::uint64_t count_ = 0;
};

// The payload every publisher sends: `size` bytes.
std::string make_payload(std::size_t size);

} // namespace bench::broker
