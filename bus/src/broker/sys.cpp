// `$sys`: what busd tells about itself. Requests to `$sys.clients`, `.subscriptions`,
// `.services`, `.types`, `.type`, `.queues` and `.stats` are answered here from the router's
// state (broker.proto has the replies); other `$sys.<prefix>...` requests go to the handler
// busd registered for the prefix (the cluster's `$sys.cluster.`). busd's own events
// (`$sys.client.connected`, the cluster's, workers' log lines) are published from here too.
#include "broker/router.hpp"

#include "bus/frame.hpp"
#include "bus/shm_queue.hpp"

#include <google/protobuf/descriptor.pb.h>

#include <algorithm>

namespace bus::broker {
namespace {

// Read from the queue's segment header, as `bus shm ls` does; the records stay where they are.
v1::QueueInfo queue_info(const std::string& name, const std::string& client_id) {
    v1::QueueInfo q;
    q.set_name(name);
    q.set_client_id(client_id);
    auto found = shm::inspect(name);
    if (!found) {
        q.set_error(found.error().message());
        return q;
    }
    const auto& i = found.value();
    if (i.error) {
        q.set_error(i.error.message());
        return q;
    }
    q.set_mode(i.mode == shm::Mode::mpsc ? "mpsc" : "spsc");
    q.set_capacity(i.stats.capacity);
    q.set_depth_bytes(i.stats.depth_bytes);
    q.set_depth_records(i.stats.depth_records);
    q.set_produced(i.stats.produced);
    q.set_consumed(i.stats.consumed);
    q.set_skipped(i.stats.skipped);
    q.set_owner_pid(static_cast<std::uint32_t>(i.owner_pid));
    q.set_owner_alive(i.owner_alive);
    q.set_producers(static_cast<std::uint32_t>(i.producers));
    q.set_consumer(i.consumer);
    return q;
}

} // namespace

v1::ClientInfo Router::info(const Client& c) const {
    v1::ClientInfo i;
    i.set_id(c.id);
    i.set_name(c.name);
    i.set_pid(c.pid);
    i.set_uid(c.uid);
    i.set_gid(c.gid);
    i.set_transport(c.link->transport());
    i.set_msgs_in(c.msgs_in);
    i.set_msgs_out(c.msgs_out);
    i.set_bytes_in(c.bytes_in);
    i.set_bytes_out(c.bytes_out);
    i.set_dropped(c.dropped);
    i.set_subscriptions(static_cast<std::uint32_t>(c.subs.size()));
    i.set_connected_unix_ns(c.connected_ns);
    i.set_queued(c.link->queued_bytes());
    i.set_dropped_unsent(c.dropped_unsent);
    return i;
}

void Router::service_info(const std::string& name, const ServiceStats& stats,
                          v1::ServiceInfo& out) const {
    out.set_name(name);
    out.set_requests(stats.requests);
    out.set_expired(stats.expired);
    out.set_ok(stats.ok);
    out.set_errors(stats.errors);
    out.set_no_responders(stats.no_responders);
    out.set_timeouts(stats.timeouts);
    out.set_service_lost(stats.service_lost);
    auto& latency = *out.mutable_latency();
    std::uint64_t count = 0;
    for (double bound : ServiceStats::bounds)
        latency.add_bounds_seconds(bound);
    for (auto n : stats.buckets) {
        latency.add_counts(n);
        count += n;
    }
    latency.set_count(count);
    latency.set_sum_seconds(static_cast<double>(stats.latency_sum_ns) * 1e-9);
}

v1::BrokerStats Router::stats() const {
    v1::BrokerStats s;
    s.set_version(version);
    s.set_broker_id(broker_id_);
    s.set_started_unix_ns(started_ns_);
    for (const auto& e : endpoints_)
        s.add_endpoints(e);
    s.set_clients(static_cast<std::uint32_t>(clients_.size()));
    s.set_msgs_routed(msgs_routed_);
    s.set_dropped(dropped_total_);
    s.set_expired(expired_total_);
    for (const auto& [name, stats] : subject_stats_)
        *s.add_subjects() = stats;
    for (const auto& [name, stats] : service_stats_)
        service_info(name, stats, *s.add_services());
    s.set_http(http_);
    if (bridges_)
        *s.mutable_bridges() = bridges_().bridges();
    return s;
}

void Router::on_sys_request(std::string prefix, Broker::SysHandler handler) {
    sys_handlers_.emplace_back(std::move(prefix), std::move(handler));
}

void Router::sys_request(Client& c, const v1::Envelope& in, std::string_view payload) {
    auto a = query(in.subject(), payload, c.uid);
    if (!a.reply)
        return send_error(c, in.id(), a.error, a.detail);
    v1::Envelope& header = out_;
    header.Clear();
    header.set_kind(v1::KIND_REPLY);
    header.set_subject(in.subject());
    header.set_type_url(frame::type_url_of(*a.reply));
    header.set_source("busd");
    header.set_correlation_id(in.id());
    const std::string body = a.reply->SerializeAsString();
    deliver(c, header, body, {});
}

Broker::SysAnswer Router::query(const std::string& what, std::string_view payload,
                                std::uint32_t uid) {
    Broker::SysAnswer a;
    auto& answer = a.reply;
    if (what == "$sys.clients") {
        auto list = std::make_unique<v1::ClientList>();
        for (const auto& [num, client] : clients_)
            if (client->allowed)
                *list->add_clients() = info(*client);
        answer = std::move(list);
    } else if (what == "$sys.subscriptions") {
        auto list = std::make_unique<v1::SubscriptionList>();
        for (const auto& [num, client] : clients_)
            for (const auto& [sid, sub] : client->subs) {
                auto* s = list->add_subscriptions();
                s->set_client_id(client->id);
                s->set_sid(sid);
                s->set_pattern(sub.pattern);
                s->set_queue_group(sub.queue);
            }
        for (const auto& m : monitors_) {
            auto* s = list->add_subscriptions();
            if (const Client* client = find(m.client))
                s->set_client_id(client->id);
            s->set_sid(m.sid);
            s->set_pattern(m.pattern);
            s->set_monitor(true);
        }
        answer = std::move(list);
    } else if (what == "$sys.services") {
        auto list = std::make_unique<v1::ServiceList>();
        for (const auto& [name, service] : services_) {
            auto* s = list->add_services();
            service_info(name, *service.stats, *s);
            for (auto num : service.instances)
                if (auto* instance = find(num))
                    s->add_instances(instance->id);
        }
        answer = std::move(list);
    } else if (what == "$sys.types") {
        auto list = std::make_unique<v1::TypeList>();
        types_.list(*list);
        answer = std::move(list);
    } else if (what == "$sys.type") {
        // The request's payload names the type; the answer is its FileDescriptorSet.
        const std::string* set_bytes = types_.find(std::string(payload));
        if (!set_bytes) {
            a.error = errc::no_responders;
            a.detail = "unknown type";
            return a;
        }
        auto set = std::make_unique<google::protobuf::FileDescriptorSet>();
        set->ParseFromString(*set_bytes);
        answer = std::move(set);
    } else if (what == "$sys.queues") {
        auto list = std::make_unique<v1::QueueList>();
        for (const auto& [num, client] : clients_)
            for (const auto& name : client->queues)
                *list->add_queues() = queue_info(name, client->id);
        answer = std::move(list);
    } else if (what == "$sys.stats") {
        answer = std::make_unique<v1::BrokerStats>(stats());
    } else if (what == "$sys.bridges") {
        answer = std::make_unique<v1::BridgeList>(bridges_ ? bridges_() : v1::BridgeList());
    } else {
        auto h = std::find_if(sys_handlers_.begin(), sys_handlers_.end(),
                              [&](const auto& e) { return what.starts_with(e.first); });
        if (h == sys_handlers_.end()) {
            a.error = errc::no_responders;
            a.detail = what;
            return a;
        }
        return h->second(what, payload, uid);
    }
    return a;
}

void Router::announce(const Client& c, const char* subject) {
    if (subscriptions_.size() == 0 && monitors_.empty() && !event_tap_)
        return;
    publish_event(subject, info(c));
}

// Broker events go to whoever subscribed to them, like any publish, from source "busd", and to
// the tap (busd's HTTP face), which is not told workers' lines: they are logs, not events.
void Router::publish_event(const std::string& subject, const google::protobuf::Message& event) {
    if (event_tap_ && !subject.starts_with("$sys.log."))
        event_tap_(subject, event);
    if (subscriptions_.size() == 0 && monitors_.empty())
        return;
    // Serialized only for someone: busd publishes a line per line its workers print.
    Route* route = route_for(subject);
    const bool subscribed = route && (!route->plain.empty() || !route->groups.empty());
    if (!subscribed && monitors_.empty())
        return;
    v1::Envelope in;
    in.set_subject(subject);
    in.set_type_url(frame::type_url_of(event));
    const std::string body = event.SerializeAsString();
    Client broker_self;
    broker_self.id = "busd";
    if (subscribed)
        fan_out(broker_self, in, body, *route);
    if (!monitors_.empty())
        mirror(broker_self, in, v1::KIND_EVENT, body);
}

} // namespace bus::broker
