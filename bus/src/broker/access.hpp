// Who may connect, and what a connected client may publish, subscribe to and monitor
// (busd's [access] config, bus/broker_config.hpp). Credentials come from the kernel (SO_PEERCRED,
// or libzmq's ipc peer address), never from the client; busd's own uid is never restricted.
#pragma once

#include "bus/broker.hpp"

#include <cstdint>
#include <string_view>

namespace bus::broker {

struct Client;

class Access {
public:
    explicit Access(const Options& options) : options_(options) {}

    // May a peer with these credentials connect at all.
    bool allowed(std::uint32_t uid, std::uint32_t gid) const;
    // The rule that restricts a client with these credentials; nullptr: unrestricted.
    const AccessRule* rule_for(std::uint32_t uid, std::uint32_t gid) const;
    // May `c` publish (or request) `subject`.
    static bool may_publish(const Client& c, std::string_view subject);
    // May `c` subscribe to (or serve) everything `pattern` matches.
    static bool may_subscribe(const Client& c, std::string_view pattern);
    // May `c` monitor: busd's own uid and [access] monitor_uids; tcp:// clients have no uid.
    bool may_monitor(const Client& c) const;

private:
    const Options& options_;
};

} // namespace bus::broker
