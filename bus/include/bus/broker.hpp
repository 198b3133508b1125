// The broker (busd's core, as a library so tests can run it in-process).
//
// It serves ZeroMQ (ipc://, a ROUTER) and unix:// (a stream socket speaking the channel
// framing, which carries fds and gives the kernel's peer credentials), and routes envelopes by
// their header only: payloads are forwarded untouched. Protocol: docs/protocol.md.
//
// Delivery promises (DESIGN.md): publishes reach subscribers at most once, in order per
// publisher; a subscriber whose bounded queue is full loses messages alone (counted, and told
// with a "slow_consumer" control message) and never blocks a publisher. A request gets exactly
// one of: a reply, no_responders at once, or service_lost when its instance goes away (the
// requester's own deadline gives timeout).
#pragma once

#include "bus/error.hpp"
#include "bus/unique_fd.hpp"
#include "bus/v1/broker.pb.h"

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <sys/types.h>

namespace bus {
class Channel;
}

namespace bus::broker {

struct Limits {
    std::size_t max_message_size = 8u << 20;
    // Per client: bytes queued on a unix:// link; on ZeroMQ, as many batches (ZeroMQ messages
    // of up to 16 KiB, see docs/protocol.md) as that holds, at least 16 and at most
    // client_queue_messages (ZeroMQ's SNDHWM counts batches).
    int client_queue_messages = 2000;
    std::size_t client_queue_bytes = 2u << 20;
    std::size_t max_subscriptions = 10000; // per client
    std::size_t max_services = 1000;       // per client
    std::size_t max_types = 10000;         // in the type registry, in all
    std::size_t max_type_descriptor_size = 1u << 20;
    // Subjects and services with statistics of their own ($sys.stats, /metrics); the rest are
    // counted together under "(other)", so that a subject per order id grows neither busd nor
    // the series a scraper keeps.
    std::size_t max_tracked_subjects = 1000;
};

// Restricts the clients of one uid (or gid) to some subjects. A client no rule names is not
// restricted; busd's own uid never is. A rule also lets its uid/gid connect.
struct AccessRule {
    std::optional<uid_t> uid;
    std::optional<gid_t> gid;
    std::vector<std::string> publish;   // patterns: what it may publish and request
    std::vector<std::string> subscribe; // patterns: what it may subscribe to and serve
};

struct Options {
    // "ipc://PATH", "unix://PATH", "tcp://HOST:PORT" (one of each at most); empty: ipc and
    // unix in the per-user runtime directory.
    std::vector<std::string> endpoints;
    // A tcp:// endpoint requires a CURVE key pair (Z85, 40 characters each); a client must
    // know the public key to connect.
    std::string curve_public_key;
    std::string curve_secret_key;
    Limits limits;
    // Who may connect besides the broker's own uid (peer credentials from the kernel).
    std::vector<uid_t> allowed_uids;
    std::vector<gid_t> allowed_gids;
    std::vector<AccessRule> rules;
    // Who may monitor (a copy of everything routed) besides the broker's own uid.
    std::vector<uid_t> monitor_uids;
    // Pings both ways; a ZeroMQ client silent for 3 intervals is dropped.
    std::chrono::milliseconds heartbeat{1000};
};

class Broker {
public:
    // Binds every endpoint and starts serving on `io`. On failure `failed_endpoint` (if given)
    // names the endpoint; std::errc::address_in_use means another broker serves it.
    static Result<std::unique_ptr<Broker>> start(boost::asio::io_context& io, Options options,
                                                 std::string* failed_endpoint = nullptr);
    ~Broker();
    Broker(const Broker&) = delete;
    Broker& operator=(const Broker&) = delete;

    // Serves a client on an already connected channel (bus serialization): how busd talks to
    // the workers it starts, which pick the channel up with Client::from_parent. The peer's
    // credentials come from the kernel, as for unix:// clients.
    void adopt(std::shared_ptr<Channel> channel);
    // The same on a connected socket, with the broker's limits; `pid` names the client when
    // the socket's peer credentials do not (a socketpair's name the process that made it):
    // busd's link to each cluster worker, which Client::from_parent picks up (BUS_CLIENT_FD).
    void adopt(UniqueFd socket, pid_t pid);
    // The same for a bridge of busd's (bridge/, docs/bridge.md): a message from a bridge
    // client never reaches a bridge client, and a bridge's instance of a service is used only
    // when no other instance serves it.
    void adopt_bridge(UniqueFd socket);
    // Called when a service name gets its first instance that is not a bridge's (`served`
    // true) or loses its last one (false): what a bridge exports as a service.
    using ServiceWatch = std::function<void(const std::string& name, bool served)>;
    void on_local_service(ServiceWatch watch);
    // The names local (non-bridge) instances serve now.
    std::vector<std::string> local_services() const;
    // Registers a type's description (a serialized FileDescriptorSet) as a client's
    // `register_type` does, for busd's bridges, which learn types from other hosts. Refused
    // (the registry's bounds, a set that does not define `name`): the error, `detail` says why.
    std::error_code register_type(const std::string& name, std::string_view descriptor_set,
                                  const std::string& registered_by, std::string& detail);
    // Where `$sys.bridges` and `$sys.stats`' bridges come from (busd's bridges).
    void on_bridges(std::function<v1::BridgeList()> report);

    // Requests to `$sys.<prefix>...` that the broker does not answer itself go to `handler`
    // (busd's cluster answers "$sys.cluster."), with the requester's uid from the kernel
    // (4294967295 over tcp://). No reply is an ERROR reply named after `error`, with `detail`.
    struct SysAnswer {
        std::unique_ptr<google::protobuf::Message> reply;
        errc error = errc::request_failed;
        std::string detail;
    };
    using SysHandler = std::function<SysAnswer(const std::string& subject, std::string_view payload,
                                               std::uint32_t uid)>;
    void on_sys_request(std::string prefix, SysHandler handler);

    // Publishes a `$sys` event from busd itself (source "busd", kind EVENT to monitors), e.g.
    // the cluster's `$sys.cluster.errored` and `$sys.log.APP`. Costs nothing without subscribers
    // or a tap.
    void publish_event(const std::string& subject, const google::protobuf::Message& event);

    // The answer a client's `$sys` request `subject` would get (the same code), for busd's other
    // faces (HTTP): `$sys.clients`, `.stats`, ..., and what on_sys_request() handlers answer.
    // `uid` is the asker's, for handlers that check it.
    SysAnswer query(const std::string& subject, std::string_view payload, std::uint32_t uid);
    // Sees every event busd publishes (its own: clients connected and gone, slow consumers,
    // the cluster's; not workers' log lines, `$sys.log.*`), subscribed or not. One tap; an
    // empty function removes it.
    using EventTap =
        std::function<void(const std::string& subject, const google::protobuf::Message& event)>;
    void on_event(EventTap tap);
    // Where busd's HTTP face listens, for `$sys.stats` (BrokerStats.http) and `bus status`.
    void set_http(std::string url);

    const std::vector<std::string>& endpoints() const noexcept;
    v1::BrokerStats stats() const;

    struct Impl;

private:
    explicit Broker(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

} // namespace bus::broker
