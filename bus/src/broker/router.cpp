// The router's clients, routing and delivery (router.hpp says how the work is divided).
#include "broker/router.hpp"

#include "broker/outbound.hpp"
#include "bus/frame.hpp"
#include "bus/subject.hpp"

#include <algorithm>
#include <charconv>

namespace bus::broker {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t max_routes = 4096; // subjects whose routes are cached

std::int64_t now_unix_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::int64_t now_steady_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
        .count();
}

void count(v1::SubjectStats& s, std::size_t bytes, bool dropped) {
    if (dropped) {
        s.set_dropped(s.dropped() + 1);
    } else {
        s.set_msgs(s.msgs() + 1);
        s.set_bytes(s.bytes() + bytes);
    }
}

} // namespace

const char* const version = BUS_VERSION;

Router::Router(const Options& options, std::string broker_id)
    : options_(options), access_(options), broker_id_(std::move(broker_id)),
      started_ns_(now_unix_ns()),
      types_(options.limits.max_types, options.limits.max_type_descriptor_size) {}

Router::~Router() = default;

// --- clients ------------------------------------------------------------------------------

Client& Router::add(std::unique_ptr<Link> link) {
    auto c = std::make_unique<Client>();
    c->num = next_client_++;
    c->id = "c" + std::to_string(c->num);
    c->link = std::move(link);
    c->connected_ns = now_unix_ns();
    c->last_seen = Clock::now();
    auto& ref = *c;
    clients_.emplace(ref.num, std::move(c));
    return ref;
}

Client* Router::find(std::uint64_t num) {
    auto it = clients_.find(num);
    return it == clients_.end() ? nullptr : it->second.get();
}

Client* Router::find_by_id(std::string_view id) {
    std::uint64_t num = 0;
    if (id.size() < 2 || id[0] != 'c')
        return nullptr;
    auto [end, ec] = std::from_chars(id.data() + 1, id.data() + id.size(), num);
    if (ec != std::errc() || end != id.data() + id.size())
        return nullptr;
    return find(num);
}

// --- routing ------------------------------------------------------------------------------

void Router::handle(Client& c, v1::Envelope& in, std::string_view payload,
                    std::vector<UniqueFd>& fds) {
    ++c.msgs_in;
    c.bytes_in += payload.size();
    if (payload.size() > options_.limits.max_message_size)
        return send_error(c, in.id(), errc::message_too_large, "");
    if (!monitors_.empty() && in.kind() != v1::KIND_CONTROL)
        mirror(c, in, in.kind(), payload);
    switch (in.kind()) {
    case v1::KIND_CONTROL:
        return handle_control(c, in, payload);
    case v1::KIND_PUBLISH:
        return publish(c, in, payload, fds);
    case v1::KIND_REQUEST:
        return request(c, in, payload, fds);
    case v1::KIND_REPLY:
    case v1::KIND_ERROR:
        return reply(c, in, payload, fds);
    case v1::KIND_DIRECT:
        return direct(c, in, payload, fds);
    default:
        return send_error(c, in.id(), errc::bad_frame, "unknown kind");
    }
}

// busd's own `$sys` subjects (a handful: its events, a log subject per app) are tracked beside
// the limit, which is the users'.
v1::SubjectStats& Router::stats_for(const std::string& subject) {
    auto it = subject_stats_.find(subject);
    if (it != subject_stats_.end())
        return it->second;
    const bool own = is_sys(subject);
    const bool room = own || tracked_subjects_ < options_.limits.max_tracked_subjects;
    it = subject_stats_.try_emplace(room ? subject : std::string("(other)")).first;
    if (it->second.subject().empty()) {
        it->second.set_subject(it->first);
        tracked_subjects_ += room && !own;
    }
    return it->second;
}

Router::ServiceStats& Router::service_stats(const std::string& name) {
    auto it = service_stats_.find(name);
    if (it == service_stats_.end())
        it = service_stats_
                 .try_emplace(service_stats_.size() < options_.limits.max_tracked_subjects
                                  ? name
                                  : std::string("(other)"))
                 .first;
    return it->second;
}

void Router::ServiceStats::observe(std::int64_t ns) {
    const double seconds = static_cast<double>(ns) * 1e-9;
    ++buckets[std::lower_bound(bounds.begin(), bounds.end(), seconds) - bounds.begin()];
    latency_sum_ns += ns;
}

void Router::publish(Client& c, const v1::Envelope& in, std::string_view payload,
                     std::vector<UniqueFd>& fds) {
    if (is_sys(in.subject()))
        return send_error(c, in.id(), errc::forbidden, "$sys is the broker's");
    if (!Access::may_publish(c, in.subject()))
        return send_error(c, in.id(), errc::forbidden, in.subject());
    if (!fds.empty())
        return send_error(c, in.id(), errc::fds_not_supported,
                          "file descriptors go to one receiver: use a request or send_to");
    Route* route = route_for(in.subject());
    if (!route)
        return send_error(c, in.id(), errc::invalid_subject, in.subject());
    fan_out(c, in, payload, *route);
}

// The cached route of a valid subject; nullptr for an invalid one.
Router::Route* Router::route_for(const std::string& subject) {
    if (auto it = routes_.find(subject); it != routes_.end())
        return &it->second;
    if (!valid_subject(subject))
        return nullptr;
    if (routes_.size() >= max_routes)
        routes_.clear();
    Route& route = routes_[subject];
    route.stats = &stats_for(subject);
    std::unordered_map<std::string_view, std::size_t> group_index;
    subscriptions_.match(subject, [&](const SubRef& s) {
        Client* c = find(s.client);
        if (!c)
            return;
        if (s.queue.empty())
            return route.plain.push_back({c, s.sid});
        auto [it, added] = group_index.try_emplace(s.queue, route.groups.size());
        if (added) {
            route.groups.emplace_back();
            route.turns.push_back(&queue_turns_[s.queue]);
        }
        route.groups[it->second].push_back({c, s.sid});
    });
    return &route;
}

// Plain subscriptions all get it; each queue group gets it once, round-robin. The header is
// serialized once; each recipient's copy differs only by its subscription id, appended.
void Router::fan_out(const Client& from, const v1::Envelope& in, std::string_view payload,
                     Route& route) {
    outbound(fanout_head_, from, in, v1::KIND_PUBLISH);
    const std::size_t base = fanout_head_.size();
    auto deliver_to = [&](const Target& t) {
        // What came in through a bridge never goes out through one (docs/bridge.md).
        if (from.bridge && t.client->bridge)
            return;
        fanout_head_.resize(base);
        FieldWriter{fanout_head_}.varint_field(12, t.sid);
        const bool sent =
            deliver(*t.client, fanout_head_, payload, {}, Queued{.stats = route.stats});
        count(*route.stats, payload.size(), !sent);
    };
    // A delivery never removes a client on the spot (a gone ZeroMQ peer is removed from a
    // posted handler, a channel reports its end from the loop), so the route stays valid.
    for (const Target& t : route.plain)
        deliver_to(t);
    for (std::size_t g = 0; g < route.groups.size(); ++g) {
        const auto& members = route.groups[g];
        deliver_to(members[(*route.turns[g])++ % members.size()]);
    }
    route.stats->set_msgs_in(route.stats->msgs_in() + 1);
    route.stats->set_bytes_in(route.stats->bytes_in() + payload.size());
    ++msgs_routed_;
}

void Router::request(Client& c, const v1::Envelope& in, std::string_view payload,
                     std::vector<UniqueFd>& fds) {
    if (is_sys(in.subject()))
        return sys_request(c, in, payload);
    // A name someone serves was validated when it was served.
    auto it = services_.find(in.subject());
    if (it == services_.end() && !valid_subject(in.subject()))
        return send_error(c, in.id(), errc::invalid_subject, in.subject());
    if (!Access::may_publish(c, in.subject()))
        return send_error(c, in.id(), errc::forbidden, in.subject());
    if (it == services_.end() || it->second.instances.empty()) {
        // Counted for a name that was served: any other name would be a series of its own.
        if (auto s = service_stats_.find(in.subject()); s != service_stats_.end())
            ++s->second.no_responders;
        return send_error(c, in.id(), errc::no_responders, in.subject());
    }
    auto& service = it->second;
    ServiceStats& stats = *service.stats;
    // Its requester has given up and been told so: no service runs it now. (A ZeroMQ link
    // hands a restarted busd the requests it queued while busd was down, seconds late.)
    if (in.deadline_unix_ns() != 0 && in.deadline_unix_ns() <= now_unix_ns()) {
        ++stats.expired;
        ++expired_total_;
        return send_error(c, in.id(), errc::expired, in.subject());
    }
    Client* server = pick_instance(service, c);
    if (!server) {
        ++stats.no_responders;
        return send_error(c, in.id(), errc::no_responders, in.subject());
    }
    if (!fds.empty() && !server->link->carries_fds())
        return send_error(c, in.id(), errc::fds_not_supported,
                          "the serving instance has no unix:// link");
    const std::uint64_t id = next_request_++;
    FieldWriter w{outbound(header_bytes_, c, in, v1::KIND_REQUEST)};
    w.varint_field(5, id);
    w.varint_field(11, fds.size());
    if (!deliver(*server, header_bytes_, payload, std::move(fds), Queued{.request = id})) {
        ++stats.service_lost;
        return send_error(c, in.id(), errc::service_lost, "instance overloaded");
    }
    ++stats.requests;
    in_flight_.emplace(
        id, InFlight{c.num, server->num, in.id(), in.deadline_unix_ns(), &stats, now_steady_ns()});
    ++msgs_routed_;
}

void Router::reply(Client& c, const v1::Envelope& in, std::string_view payload,
                   std::vector<UniqueFd>& fds) {
    auto it = in_flight_.find(in.correlation_id());
    if (it == in_flight_.end() || it->second.server != c.num)
        return; // late (the requester is gone or timed out) or not this client's to answer
    const InFlight f = it->second;
    in_flight_.erase(it);
    ++(in.kind() == v1::KIND_ERROR ? f.stats->errors : f.stats->ok);
    f.stats->observe(now_steady_ns() - f.sent_ns);
    Client* requester = find(f.requester);
    if (!requester)
        return;
    if (!fds.empty() && !requester->link->carries_fds())
        return send_error(*requester, f.client_request_id, errc::fds_not_supported,
                          "the reply carried file descriptors");
    FieldWriter w{outbound(header_bytes_, c, in, in.kind())};
    w.varint_field(6, f.client_request_id);
    w.varint_field(11, fds.size());
    deliver(*requester, header_bytes_, payload, std::move(fds));
    ++msgs_routed_;
}

void Router::direct(Client& c, const v1::Envelope& in, std::string_view payload,
                    std::vector<UniqueFd>& fds) {
    Client* to = find_by_id(in.subject());
    if (!to || !to->allowed)
        return send_error(c, in.id(), errc::no_such_client, in.subject());
    if (!fds.empty() && !to->link->carries_fds())
        return send_error(c, in.id(), errc::fds_not_supported, "the receiver has no unix:// link");
    FieldWriter w{outbound(header_bytes_, c, in, v1::KIND_DIRECT)};
    w.varint_field(5, in.id());
    w.varint_field(11, fds.size());
    deliver(*to, header_bytes_, payload, std::move(fds));
    ++msgs_routed_;
}

// --- delivery -----------------------------------------------------------------------------

// Sends to one client without ever waiting; false when its link refuses (the message is dropped
// for it alone and counted). `header` is serialized, with an fd_count equal to fds.size().
bool Router::deliver(Client& to, std::string_view header, std::string_view payload,
                     std::vector<UniqueFd> fds, Queued queued) {
    if (to.unreported_drops && !report_drops(to))
        return drop(to);
    queued.delivery = true;
    if (!to.link->send(header, payload, std::move(fds), queued))
        return drop(to);
    ++to.msgs_out;
    to.bytes_out += payload.size();
    return true;
}

bool Router::deliver(Client& to, v1::Envelope& header, std::string_view payload,
                     std::vector<UniqueFd> fds) {
    header.set_fd_count(static_cast<std::uint32_t>(fds.size()));
    header.SerializeToString(&header_bytes_);
    return deliver(to, header_bytes_, payload, std::move(fds));
}

bool Router::drop(Client& to) {
    ++to.dropped;
    ++to.unreported_drops;
    ++dropped_total_;
    // Announced from the heartbeat: an event routed now would reuse the buffers of the
    // delivery under way.
    if (!to.slow_announced) {
        to.slow_announced = true;
        slow_.push_back(to.num);
    }
    return false;
}

bool Router::report_drops(Client& to) {
    // While a subscriber is behind this runs for every message it is dropped: a link that
    // would refuse the notice is found out before the notice is built.
    if (!to.link->ready())
        return false;
    v1::SlowConsumer notice;
    notice.set_dropped(to.unreported_drops);
    v1::Envelope header;
    header.set_kind(v1::KIND_CONTROL);
    header.set_subject("slow_consumer");
    header.set_source("busd");
    // Its own buffer: this runs in the middle of deliveries that use the shared ones.
    const std::string head = header.SerializeAsString();
    const std::uint64_t told = to.unreported_drops;
    if (!to.link->send(head, notice.SerializeAsString(), {}, Queued{.told = told}))
        return false;
    // Not `= 0`: a ZeroMQ link that handed its batch over to make room may have had earlier
    // messages refused inside send(), and those are not in this notice.
    to.unreported_drops -= told;
    to.slow_announced = to.unreported_drops != 0;
    return true;
}

void Router::refused(Client& to, const Queued& q) {
    if (q.delivery) {
        drop(to);
        ++to.dropped_unsent;
        --to.msgs_out;
        to.bytes_out -= q.bytes;
    }
    to.unreported_drops += q.told;
    if (q.stats) {
        q.stats->set_msgs(q.stats->msgs() - 1);
        q.stats->set_bytes(q.stats->bytes() - q.bytes);
        q.stats->set_dropped(q.stats->dropped() + 1);
    }
    if (q.request) {
        auto f = in_flight_.find(q.request);
        if (f == in_flight_.end())
            return;
        const InFlight flight = f->second;
        in_flight_.erase(f);
        ++flight.stats->service_lost;
        if (Client* requester = find(flight.requester))
            send_error(*requester, flight.client_request_id, errc::service_lost,
                       "instance overloaded");
    }
}

void Router::send_control(Client& to, const char* op, const google::protobuf::Message* body,
                          std::uint64_t id) {
    v1::Envelope header;
    header.set_kind(v1::KIND_CONTROL);
    header.set_subject(op);
    header.set_source("busd");
    header.set_correlation_id(id);
    const std::string bytes = body ? body->SerializeAsString() : std::string();
    to.link->send(header.SerializeAsString(), bytes, {}, {});
}

void Router::send_error(Client& to, std::uint64_t correlation_id, errc code,
                        std::string_view detail) {
    v1::Envelope header;
    header.set_kind(v1::KIND_ERROR);
    header.set_subject(std::string(error_wire_name(code)));
    header.set_source("busd");
    header.set_correlation_id(correlation_id);
    auto* h = header.add_headers();
    h->set_key("detail");
    h->set_value(std::string(detail.substr(0, 256)));
    deliver(to, header, {}, {});
}

// --- leaving ------------------------------------------------------------------------------

Client* Router::pick_instance(Service& service, const Client& from) {
    const std::size_t n = service.instances.size();
    for (const bool bridges : {false, true}) {
        if (bridges && from.bridge)
            break;
        for (std::size_t i = 0; i < n; ++i) {
            Client* s = find(service.instances[(service.next + i) % n]);
            if (s && s->bridge == bridges) {
                service.next += i + 1;
                return s;
            }
        }
    }
    return nullptr;
}

std::size_t Router::local_instances(const Service& service) {
    return static_cast<std::size_t>(
        std::count_if(service.instances.begin(), service.instances.end(), [this](auto num) {
            const Client* c = find(num);
            return c && !c->bridge;
        }));
}

std::vector<std::string> Router::local_services() const {
    std::vector<std::string> out;
    for (const auto& [name, service] : services_)
        if (std::any_of(service.instances.begin(), service.instances.end(), [this](auto num) {
                auto c = clients_.find(num);
                return c != clients_.end() && !c->second->bridge;
            }))
            out.push_back(name);
    return out;
}

void Router::drop_instance(const std::string& name, const Client& c) {
    auto it = services_.find(name);
    if (it == services_.end())
        return;
    auto& v = it->second.instances;
    v.erase(std::remove(v.begin(), v.end(), c.num), v.end());
    // (`c` may be gone from clients_ already: it is leaving)
    const bool lost_last = !c.bridge && local_instances(it->second) == 0;
    if (v.empty())
        services_.erase(it);
    if (lost_last && service_watch_)
        service_watch_(name, false);
}

void Router::remove(std::uint64_t num) {
    auto it = clients_.find(num);
    if (it == clients_.end())
        return;
    std::unique_ptr<Client> c = std::move(it->second);
    clients_.erase(it);
    for (const auto& [sid, sub] : c->subs)
        subscriptions_.erase(sub.pattern, SubRef{num, sid, {}});
    if (!c->subs.empty())
        routes_.clear();
    if (!monitors_.empty())
        std::erase_if(monitors_, [num](const MonitorRef& m) { return m.client == num; });
    for (const auto& name : c->services)
        drop_instance(name, *c);
    // Requests it was serving: their requesters learn now, not at their deadline, in the
    // order they were routed. Requests it was waiting for are forgotten.
    std::vector<std::pair<std::uint64_t, InFlight>> lost;
    for (auto f = in_flight_.begin(); f != in_flight_.end();) {
        if (f->second.server == num)
            lost.emplace_back(*f);
        if (f->second.server == num || f->second.requester == num)
            f = in_flight_.erase(f);
        else
            ++f;
    }
    std::sort(lost.begin(), lost.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    const auto now_ns = now_unix_ns();
    for (const auto& [id, f] : lost) {
        // Past its deadline (the heartbeat had not swept it yet): its requester has given up.
        if (f.deadline_ns != 0 && f.deadline_ns < now_ns) {
            ++f.stats->timeouts;
            continue;
        }
        ++f.stats->service_lost;
        if (auto* requester = find(f.requester))
            send_error(*requester, f.client_request_id, errc::service_lost, c->id + " went away");
    }
    c->link->close();
    if (c->announced)
        announce(*c, "$sys.client.disconnected");
}

void Router::close_all() {
    for (auto& [num, c] : clients_)
        c->link->close();
    // The links go too: they may refer to endpoints that go next.
    routes_.clear();
    subscriptions_ = SubjectTrie<SubRef>();
    services_.clear();
    in_flight_.clear();
    monitors_.clear();
    clients_.clear();
}

// --- heartbeat ----------------------------------------------------------------------------

void Router::heartbeat() {
    const auto now = Clock::now();
    const auto now_ns = now_unix_ns();
    std::vector<std::uint64_t> silent;
    for (auto& [num, c] : clients_) {
        if (c->link->silent_when_gone() && now - c->last_seen > 3 * options_.heartbeat)
            silent.push_back(num);
        else
            send_control(*c, "ping", nullptr, 0);
        if (c->unreported_drops)
            report_drops(*c);
    }
    for (auto num : silent)
        remove(num);
    // Requests past their deadline: the requester has given up; forget them.
    std::erase_if(in_flight_, [now_ns](const auto& f) {
        const bool late = f.second.deadline_ns != 0 && f.second.deadline_ns < now_ns;
        if (late)
            ++f.second.stats->timeouts;
        return late;
    });
    std::sort(slow_.begin(), slow_.end());
    slow_.erase(std::unique(slow_.begin(), slow_.end()), slow_.end());
    for (auto num : std::exchange(slow_, {}))
        if (const Client* c = find(num); c && c->announced)
            publish_event("$sys.client.slow_consumer", info(*c));
}

} // namespace bus::broker
