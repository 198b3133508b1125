#include "broker/access.hpp"

#include "broker/client.hpp"
#include "bus/subject.hpp"

#include <algorithm>

#include <unistd.h>

namespace bus::broker {

const AccessRule* Access::rule_for(std::uint32_t uid, std::uint32_t gid) const {
    if (uid == ::getuid())
        return nullptr;
    for (const auto& rule : options_.rules)
        if ((rule.uid && *rule.uid == uid) || (rule.gid && *rule.gid == gid))
            return &rule;
    return nullptr;
}

bool Access::allowed(std::uint32_t uid, std::uint32_t gid) const {
    if (uid == ::getuid() || rule_for(uid, gid))
        return true;
    const auto& u = options_.allowed_uids;
    const auto& g = options_.allowed_gids;
    return std::find(u.begin(), u.end(), uid) != u.end() ||
           std::find(g.begin(), g.end(), gid) != g.end();
}

bool Access::may_publish(const Client& c, std::string_view subject) {
    if (!c.rule)
        return true;
    return std::any_of(c.rule->publish.begin(), c.rule->publish.end(),
                       [&](const std::string& p) { return subject_matches(p, subject); });
}

bool Access::may_subscribe(const Client& c, std::string_view pattern) {
    if (!c.rule)
        return true;
    return std::any_of(c.rule->subscribe.begin(), c.rule->subscribe.end(),
                       [&](const std::string& a) { return pattern_covers(a, pattern); });
}

bool Access::may_monitor(const Client& c) const {
    if (c.link->kind() == Link::Kind::zmq_tcp)
        return false;
    const auto& uids = options_.monitor_uids;
    return c.uid == ::getuid() || std::find(uids.begin(), uids.end(), c.uid) != uids.end();
}

} // namespace bus::broker
