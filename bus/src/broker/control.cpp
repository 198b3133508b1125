// CONTROL envelopes (docs/protocol.md): what a client asks of the broker itself rather than of
// other clients: hello/ping, subscribing, serving, registering types, announcing shared-memory
// queues, monitoring. Every body is a client's bytes: parsed, bounded and checked here.
#include "broker/router.hpp"

#include "bus/frame.hpp"
#include "bus/shm_queue.hpp"
#include "bus/subject.hpp"

#include <algorithm>

namespace bus::broker {
namespace {

constexpr std::size_t max_queues_per_client = 256;

// A client-chosen name or queue group: printable ASCII, bounded.
bool clean_label(std::string_view s, std::size_t max) {
    if (s.size() > max)
        return false;
    return std::all_of(s.begin(), s.end(), [](char c) { return c > ' ' && c < 0x7f; });
}

template <class M>
bool parse(M& m, std::string_view body) {
    return m.ParseFromArray(body.data(), static_cast<int>(body.size()));
}

} // namespace

void Router::handle_control(Client& c, const v1::Envelope& in, std::string_view body) {
    const auto& op = in.subject();
    if (op == "ping" || op == "hello") {
        if (op == "hello") {
            v1::Hello hello;
            if (!parse(hello, body) || !clean_label(hello.name(), 128))
                return send_error(c, in.id(), errc::bad_frame, "bad hello");
            c.name = hello.name();
            if (!c.announced) {
                c.announced = true; // once it has a name
                announce(c, "$sys.client.connected");
            }
        }
        v1::Welcome welcome;
        welcome.set_client_id(c.id);
        welcome.set_broker_id(broker_id_);
        welcome.set_version(version);
        welcome.set_heartbeat_ms(static_cast<std::uint32_t>(options_.heartbeat.count()));
        return send_control(c, op == "hello" ? "welcome" : "pong", &welcome, in.id());
    }
    if (op == "pong")
        return;
    if (op == "sub") {
        v1::Subscribe sub;
        if (!parse(sub, body))
            return send_error(c, in.id(), errc::bad_frame, "bad subscribe");
        if (!valid_pattern(sub.pattern()) || !clean_label(sub.queue_group(), 128))
            return send_error(c, sub.sid(), errc::invalid_subject, sub.pattern());
        if (!Access::may_subscribe(c, sub.pattern()))
            return send_error(c, sub.sid(), errc::forbidden, sub.pattern());
        if (c.subs.size() >= options_.limits.max_subscriptions || c.subs.count(sub.sid()))
            return send_error(c, sub.sid(), errc::forbidden, "subscription limit or id reused");
        subscriptions_.insert(sub.pattern(), SubRef{c.num, sub.sid(), sub.queue_group()});
        routes_.clear();
        c.subs.emplace(sub.sid(), Client::Sub{sub.pattern(), sub.queue_group()});
        return;
    }
    if (op == "unsub") {
        v1::Unsubscribe unsub;
        if (!parse(unsub, body))
            return send_error(c, in.id(), errc::bad_frame, "bad unsubscribe");
        if (auto it = c.subs.find(unsub.sid()); it != c.subs.end()) {
            subscriptions_.erase(it->second.pattern, SubRef{c.num, unsub.sid(), {}});
            routes_.clear();
            c.subs.erase(it);
        }
        return;
    }
    if (op == "register_type") {
        // A client's description of a type it sends (type_registry.hpp).
        const std::string_view url = in.type_url();
        const std::string name(url.substr(
            url.starts_with(frame::type_url_prefix) ? frame::type_url_prefix.size() : 0));
        std::string detail;
        if (auto ec = types_.add(name, body, c.id, detail))
            return send_error(c, in.id(), static_cast<errc>(ec.value()), detail);
        return;
    }
    if (op == "queue") {
        v1::QueueAnnounce queue;
        if (!parse(queue, body) || !shm::valid_name(queue.name()))
            return send_error(c, in.id(), errc::bad_frame, "bad queue announcement");
        if (c.queues.size() >= max_queues_per_client)
            return send_error(c, in.id(), errc::forbidden, "queue limit");
        c.queues.insert(queue.name());
        return;
    }
    if (op == "monitor" || op == "unmonitor")
        return monitor_control(c, op, in, body);
    if (op == "serve" || op == "unserve") {
        v1::Serve serve;
        if (!parse(serve, body))
            return send_error(c, in.id(), errc::bad_frame, "bad serve");
        const std::string& name = serve.service();
        if (!valid_subject(name) || is_sys(name))
            return send_error(c, in.id(), errc::invalid_subject, name);
        if (!Access::may_subscribe(c, name))
            return send_error(c, in.id(), errc::forbidden, name);
        if (op == "serve") {
            if (c.services.size() >= options_.limits.max_services)
                return send_error(c, in.id(), errc::forbidden, "service limit");
            if (c.services.insert(name).second) {
                auto& service = services_[name];
                if (!service.stats)
                    service.stats = &service_stats(name);
                service.instances.push_back(c.num);
                if (!c.bridge && service_watch_ && local_instances(service) == 1)
                    service_watch_(name, true);
            }
        } else if (c.services.erase(name)) {
            drop_instance(name, c);
        }
        return;
    }
    send_error(c, in.id(), errc::bad_frame, "unknown control operation");
}

} // namespace bus::broker
