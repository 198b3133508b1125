// busd as a leaf of a NATS cluster: one `[[bridge.nats]]` (docs/bridge.md).
//
// The bridge is a bus client of busd's own, over a socketpair the broker adopts as a bridge
// (Broker::adopt_bridge): busd never routes what a bridge client sends to a bridge client, and
// uses a bridge's instance of a service only when no local instance serves it. So a message
// that came in through a bridge never goes out through one, and local instances come first.
// On the NATS side the connection is "no echo": NATS never hands the bridge its own messages.
//
//   export   local publishes on these patterns are published on NATS (headers kept, the
//            type as the `bus-type` header); local services whose names match are served on
//            NATS, all of a busd's instances as one NATS queue group ("bus").
//   import   NATS messages on these patterns are published locally; literal names are also
//            served locally, each request becoming a NATS request with the same deadline.
//
// nats.c runs its callbacks on threads of its own: they copy what they got and post it to
// busd's loop, counting what is waiting there (at most max_pending; beyond, dropped and
// counted). Nothing of the broker's is touched off the loop. What is published while no
// server is connected waits in nats.c's reconnect buffer (buffer_bytes), then is dropped and
// counted.
#pragma once

#include "bus/broker.hpp"
#include "bus/daemon.hpp"
#include "bus/v1/broker.pb.h"

#include <boost/asio/io_context.hpp>

#include <memory>
#include <string>

namespace bus::bridge {

class NatsBridge {
public:
    // Starts connecting (in the background: busd never waits for NATS). Fails only for a
    // config nats.c refuses (a TLS file it cannot load), with `why` for a person; a server
    // that cannot be reached or refuses the credentials is an error in the bridge's status and
    // busd's log, and busd goes on serving its host.
    static Result<std::unique_ptr<NatsBridge>>
    start(boost::asio::io_context& io, broker::Broker& broker, daemon::NatsBridgeConfig config,
          std::function<void(const std::string&)> log, std::string* why);
    ~NatsBridge();
    NatsBridge(const NatsBridge&) = delete;
    NatsBridge& operator=(const NatsBridge&) = delete;

    v1::BridgeInfo info() const;
    // A local service on `name` began (served) or ceased to be: what the bridge serves on NATS
    // when `name` is exported (Broker::on_local_service, through busd's daemon).
    void local_service(const std::string& name, bool served);

    struct Impl;

private:
    explicit NatsBridge(std::shared_ptr<Impl> impl);
    std::shared_ptr<Impl> impl_;
};

} // namespace bus::bridge
