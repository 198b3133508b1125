// ZmqServer: one ZeroMQ endpoint of busd (a ROUTER on ipc:// or tcp://) feeding the router.
//
// An ipc:// peer is known by the kernel credentials libzmq reports for it; a tcp:// peer by
// CURVE (the socket is a CURVE server for all its connections). Each ZeroMQ message from a peer
// holds a batch of channel frames (docs/protocol.md); each frame goes to Router::handle().
// Outbound, the frames for one peer in one loop turn are batched the same way and handed to
// ZeroMQ once the turn's work is done; ZeroMQ refusing a batch (the peer's queue at SNDHWM)
// gives each message back to Router::refused(). ROUTER does not say which peer disconnected,
// so a disconnection event pings every peer: a send to a gone one fails at once.
#pragma once

#include "broker/router.hpp"
#include "bus/endpoint.hpp"
#include "transport/zmq_watch.hpp"

#include <boost/asio/io_context.hpp>
#include <zmq.hpp>

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace bus::broker {

class ZmqServer {
public:
    // Binds `endpoint` (ipc:// or tcp://) and starts reading. For ipc://, the socket file is
    // made 0600 and the caller unlinks it on exit.
    static Result<std::unique_ptr<ZmqServer>> bind(boost::asio::io_context& io,
                                                   zmq::context_t& context, Router& router,
                                                   const Options& options,
                                                   const Endpoint& endpoint);
    ~ZmqServer();
    ZmqServer(const ZmqServer&) = delete;
    ZmqServer& operator=(const ZmqServer&) = delete;

private:
    class Peer;
    ZmqServer(boost::asio::io_context& io, Router& router, const Options& options, bool tcp);

    void read();
    void read_frames(std::uint64_t num, std::string_view frames);
    Client& client_for(const zmq::message_t& identity, const zmq::message_t& first);
    void read_monitor();
    void list_unflushed(std::uint64_t num);
    void flush_all();

    boost::asio::io_context& io_;
    Router& router_;
    const Options& options_;
    const bool tcp_;
    std::unique_ptr<zmq::socket_t> socket_;
    std::unique_ptr<detail::ZmqWatch> watch_;
    std::unique_ptr<zmq::socket_t> monitor_;
    std::unique_ptr<detail::ZmqWatch> monitor_watch_;
    std::unordered_map<std::string, std::uint64_t> by_routing_id_;
    std::vector<std::uint64_t> unflushed_; // clients with a batch to hand to ZeroMQ
    v1::Envelope in_;                      // reused inbound header
    // Posted work checks it: a server gone (busd stopping) runs none of it.
    std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

} // namespace bus::broker
