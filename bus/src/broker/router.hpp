// The router: busd's clients, their subscriptions, the services they serve, and the requests
// in flight between them. It does no I/O and knows no transport: the endpoints
// (zmq_server.cpp, unix_server.cpp) hand it each client's envelopes, and it answers through the
// client's Link (client.hpp). So it runs whole in a unit test with links that record.
//
// Everything runs on one thread. An inbound envelope reaches handle() as a parsed header plus
// the payload bytes in place; outbound, the header is the broker's (it stamps `source`, never
// trusting the client's), serialized once per routed message, and the payload is copied
// unparsed behind it, once per recipient. Where a subject's publishes go is worked out on its
// first publish and kept until a subscription changes.
//
// A recipient whose Link refuses a message loses that message alone: it is counted and the
// client is told by a "slow_consumer" control message once it can take one again. The router
// never waits for a client, so a stalled subscriber costs a publisher nothing.
//
// The router's jobs are in files of their own: router.cpp (clients, routing, delivery,
// leaving, the heartbeat's sweep), control.cpp (CONTROL operations: hello, sub, serve, ...),
// sys.cpp ($sys requests and events), monitor.cpp (`bus monitor`'s copies); the access rules
// are access.cpp, the type registry type_registry.cpp.
#pragma once

#include "broker/access.hpp"
#include "broker/client.hpp"
#include "broker/subject_trie.hpp"
#include "broker/type_registry.hpp"
#include "bus/broker.hpp"

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace bus::broker {

// busd's version, as project() in the top CMakeLists.txt says (Welcome, $sys.stats).
extern const char* const version;

// `$sys.>` is the broker's own: its events and the requests it answers.
inline bool is_sys(std::string_view subject) {
    return subject == "$sys" || subject.starts_with("$sys.");
}

class Router {
public:
    // `options` must outlive the router.
    Router(const Options& options, std::string broker_id);
    ~Router();
    Router(const Router&) = delete;
    Router& operator=(const Router&) = delete;

    // --- for the endpoints ---------------------------------------------------------------

    // A new client on `link`; the endpoint fills in its credentials and access.
    Client& add(std::unique_ptr<Link> link);
    Client* find(std::uint64_t num);
    // Removes a client: its subscriptions and services go, the requesters of what it was
    // serving get service_lost, its Link is closed. Unknown `num`: nothing.
    void remove(std::uint64_t num);
    // One envelope from `c`; `fds` are the descriptors that came with it, taken if used.
    void handle(Client& c, v1::Envelope& in, std::string_view payload, std::vector<UniqueFd>& fds);
    // A message a Link took and then could not send (client.hpp): dropped for `to` alone.
    void refused(Client& to, const Queued& q);
    void send_control(Client& to, const char* op, const google::protobuf::Message* body,
                      std::uint64_t id);
    void send_error(Client& to, std::uint64_t correlation_id, errc code, std::string_view detail);
    const Access& access() const noexcept { return access_; }

    // --- for busd ----------------------------------------------------------------------

    // One heartbeat: pings every client, tells slow consumers what they lost, drops ZeroMQ
    // clients silent for 3 intervals, forgets requests past their deadline.
    void heartbeat();
    // Closes every client's link and forgets every client (busd is stopping).
    void close_all();
    void on_sys_request(std::string prefix, Broker::SysHandler handler);
    // The answer to `$sys` request `what` from uid `uid`: what a client gets (sys_request) and
    // busd's other faces ask for (Broker::query). sys.cpp.
    Broker::SysAnswer query(const std::string& what, std::string_view payload, std::uint32_t uid);
    // Publishes a `$sys` event from busd itself; costs nothing without subscribers or a tap.
    void publish_event(const std::string& subject, const google::protobuf::Message& event);
    void on_event(Broker::EventTap tap) { event_tap_ = std::move(tap); }
    void set_http(std::string url) { http_ = std::move(url); }
    void on_local_service(Broker::ServiceWatch watch) { service_watch_ = std::move(watch); }
    std::vector<std::string> local_services() const;
    std::error_code register_type(const std::string& name, std::string_view descriptor_set,
                                  const std::string& registered_by, std::string& detail) {
        return types_.add(name, descriptor_set, registered_by, detail);
    }
    void on_bridges(std::function<v1::BridgeList()> report) { bridges_ = std::move(report); }
    void set_endpoints(std::vector<std::string> endpoints) { endpoints_ = std::move(endpoints); }
    const std::vector<std::string>& endpoints() const noexcept { return endpoints_; }
    v1::BrokerStats stats() const;

private:
    struct SubRef {
        std::uint64_t client;
        std::uint64_t sid;
        std::string queue;
        bool operator==(const SubRef& o) const { return client == o.client && sid == o.sid; }
    };
    // What became of a service's requests (ServiceInfo in broker.proto). Kept apart from
    // Service and never forgotten (a counter must not go back to 0 when the last instance
    // leaves and another comes), for up to limits.max_tracked_subjects names, then "(other)".
    struct ServiceStats {
        // From handing a request over to reading its answer: 50 µs to 10 s.
        static constexpr std::array<double, 16> bounds{
            50e-6, 100e-6, 250e-6, 500e-6, 1e-3,   2.5e-3, 5e-3, 10e-3,
            25e-3, 50e-3,  100e-3, 250e-3, 500e-3, 1.0,    2.5,  10.0};
        std::uint64_t requests = 0, expired = 0, ok = 0, errors = 0, no_responders = 0,
                      timeouts = 0, service_lost = 0;
        std::array<std::uint64_t, bounds.size() + 1> buckets{};
        std::int64_t latency_sum_ns = 0;
        void observe(std::int64_t ns);
    };
    struct Service {
        std::vector<std::uint64_t> instances;
        std::size_t next = 0;
        ServiceStats* stats = nullptr;
    };
    struct InFlight {
        std::uint64_t requester, server, client_request_id;
        std::int64_t deadline_ns;
        ServiceStats* stats;
        std::int64_t sent_ns; // steady clock
    };
    // Where a subject's publishes go, worked out on its first publish (subject check, trie
    // walk, grouping, client look-up) and kept until any subscription changes. A client that
    // goes away takes its subscriptions with it, which drops every route: a Target's client
    // lives as long as the route.
    struct Target {
        Client* client;
        std::uint64_t sid;
    };
    struct Route {
        std::vector<Target> plain;               // each gets every message
        std::vector<std::vector<Target>> groups; // each queue group gets it once...
        std::vector<std::uint64_t*> turns;       // ...round-robin (into queue_turns_)
        v1::SubjectStats* stats = nullptr;
    };
    // `bus monitor`: who gets a copy of everything routed.
    struct MonitorRef {
        std::uint64_t client, sid;
        std::string pattern;
    };

    // router.cpp
    Client* find_by_id(std::string_view id);
    void publish(Client& c, const v1::Envelope& in, std::string_view payload,
                 std::vector<UniqueFd>& fds);
    Route* route_for(const std::string& subject);
    // Never inlined: bench/broker-instructions counts calls of these two to divide busd's
    // instructions by what it routed (a call each costs a few instructions).
    [[gnu::noinline]] void fan_out(const Client& from, const v1::Envelope& in,
                                   std::string_view payload, Route& route);
    [[gnu::noinline]] void request(Client& c, const v1::Envelope& in, std::string_view payload,
                                   std::vector<UniqueFd>& fds);
    void reply(Client& c, const v1::Envelope& in, std::string_view payload,
               std::vector<UniqueFd>& fds);
    void direct(Client& c, const v1::Envelope& in, std::string_view payload,
                std::vector<UniqueFd>& fds);
    v1::SubjectStats& stats_for(const std::string& subject);
    ServiceStats& service_stats(const std::string& name);
    bool deliver(Client& to, std::string_view header, std::string_view payload,
                 std::vector<UniqueFd> fds, Queued queued = {});
    bool deliver(Client& to, v1::Envelope& header, std::string_view payload,
                 std::vector<UniqueFd> fds);
    bool drop(Client& to);
    bool report_drops(Client& to);
    void drop_instance(const std::string& name, const Client& c);
    // The instance a request from `from` goes to: the next local one round-robin, else (not
    // for a bridge's request: no loops) the next bridge's; nullptr when none.
    Client* pick_instance(Service& service, const Client& from);
    // Instances of `service` that are not bridges'.
    std::size_t local_instances(const Service& service);

    // control.cpp
    void handle_control(Client& c, const v1::Envelope& in, std::string_view body);

    // sys.cpp
    v1::ClientInfo info(const Client& c) const;
    void service_info(const std::string& name, const ServiceStats& stats,
                      v1::ServiceInfo& out) const;
    void sys_request(Client& c, const v1::Envelope& in, std::string_view payload);
    void announce(const Client& c, const char* subject);

    // monitor.cpp
    void monitor_control(Client& c, const std::string& op, const v1::Envelope& in,
                         std::string_view body);
    void mirror(const Client& from, const v1::Envelope& in, v1::Kind kind,
                std::string_view payload);

    const Options& options_;
    Access access_;
    std::string broker_id_;
    std::int64_t started_ns_;
    std::vector<std::string> endpoints_;
    std::vector<std::pair<std::string, Broker::SysHandler>> sys_handlers_;
    Broker::EventTap event_tap_;
    std::string http_;
    Broker::ServiceWatch service_watch_;
    std::function<v1::BridgeList()> bridges_;
    std::vector<std::uint64_t> slow_; // clients that began dropping since the last heartbeat

    std::uint64_t next_client_ = 1;
    std::uint64_t next_request_ = 1;
    std::unordered_map<std::uint64_t, std::unique_ptr<Client>> clients_;
    SubjectTrie<SubRef> subscriptions_;
    std::unordered_map<std::string, std::uint64_t> queue_turns_; // round-robin per queue group
    std::unordered_map<std::string, Service> services_;
    std::unordered_map<std::string, ServiceStats> service_stats_;
    // Requests routed and not yet answered. Only here: a client that goes away is looked up by
    // a scan (rare), so routing a request touches one map, not three.
    std::unordered_map<std::uint64_t, InFlight> in_flight_;
    std::unordered_map<std::string, v1::SubjectStats> subject_stats_;
    std::size_t tracked_subjects_ = 0; // of subject_stats_: users' subjects, not "(other)" or $sys
    std::unordered_map<std::string, Route> routes_;
    TypeRegistry types_;
    // Empty in the common case, which then costs routing one test of emptiness per message.
    std::vector<MonitorRef> monitors_;
    std::uint64_t msgs_routed_ = 0, dropped_total_ = 0, expired_total_ = 0;
    v1::Envelope out_;         // reused header of the broker's own answers
    std::string fanout_head_;  // a publish's outbound header, serialized once for all recipients
    std::string header_bytes_; // any other outbound header, serialized
};

} // namespace bus::broker
