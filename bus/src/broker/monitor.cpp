// `bus monitor`: a copy of everything routed, for busd's own uid and [access] monitor_uids.
// Copies go out as PUBLISH envelopes whose monitored_kind says what the original was; the
// payload is shared as on any delivery, and a monitor that cannot keep up loses copies,
// counted as drops like any slow consumer's.
#include "broker/router.hpp"

#include "bus/subject.hpp"

#include <algorithm>

namespace bus::broker {
namespace {

constexpr long max_monitors_per_client = 16;

} // namespace

// CONTROL "monitor" / "unmonitor" (broker.proto).
void Router::monitor_control(Client& c, const std::string& op, const v1::Envelope& in,
                             std::string_view body) {
    if (op == "unmonitor") {
        v1::Unsubscribe unsub;
        if (!unsub.ParseFromArray(body.data(), static_cast<int>(body.size())))
            return send_error(c, in.id(), errc::bad_frame, "bad unmonitor");
        std::erase_if(monitors_, [&](const MonitorRef& m) {
            return m.client == c.num && m.sid == unsub.sid();
        });
        return;
    }
    v1::Subscribe sub;
    if (!sub.ParseFromArray(body.data(), static_cast<int>(body.size())))
        return send_error(c, in.id(), errc::bad_frame, "bad monitor");
    if (!valid_pattern(sub.pattern()))
        return send_error(c, sub.sid(), errc::invalid_subject, sub.pattern());
    if (!access_.may_monitor(c))
        return send_error(c, sub.sid(), errc::forbidden,
                          "monitoring is for busd's own uid and [access] monitor_uids");
    const auto mine = std::count_if(monitors_.begin(), monitors_.end(),
                                    [&](const MonitorRef& m) { return m.client == c.num; });
    if (mine >= max_monitors_per_client)
        return send_error(c, sub.sid(), errc::forbidden, "monitor limit (16 per client)");
    monitors_.push_back(MonitorRef{c.num, sub.sid(), sub.pattern()});
}

// A copy of a message for every monitor whose pattern matches its subject; replies and errors
// (whose subject is not a routing subject) go to every monitor.
void Router::mirror(const Client& from, const v1::Envelope& in, v1::Kind kind,
                    std::string_view payload) {
    v1::Envelope copy;
    copy.set_kind(v1::KIND_PUBLISH);
    copy.set_monitored_kind(kind);
    copy.set_subject(in.subject());
    copy.set_type_url(in.type_url());
    copy.set_source(from.id);
    copy.set_id(in.id());
    copy.set_correlation_id(in.correlation_id());
    copy.set_deadline_unix_ns(in.deadline_unix_ns());
    *copy.mutable_headers() = in.headers();
    const bool every = kind == v1::KIND_REPLY || kind == v1::KIND_ERROR;
    const bool routable = every || valid_subject(in.subject());
    for (std::size_t i = 0; i < monitors_.size(); ++i) {
        const auto& m = monitors_[i];
        if (!routable || (!every && !subject_matches(m.pattern, in.subject())))
            continue;
        if (Client* to = find(m.client)) {
            copy.set_subscription_id(m.sid);
            deliver(*to, copy, payload, {});
        }
    }
}

} // namespace bus::broker
