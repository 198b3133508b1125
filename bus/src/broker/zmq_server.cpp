#include "broker/zmq_server.hpp"

#include "bus/frame.hpp"
#include "transport/sockets.hpp"

#include <boost/asio/post.hpp>

#include <algorithm>
#include <charconv>

#include <sys/stat.h>
#include <unistd.h>

namespace bus::broker {
namespace {

constexpr int messages_per_wakeup = 256; // received before yielding to the loop

} // namespace

// A ZeroMQ client's way out: the frames of one loop turn, batched.
class ZmqServer::Peer final : public Link {
public:
    Peer(ZmqServer& server, std::string key)
        : Link(server.tcp_ ? Kind::zmq_tcp : Kind::zmq_ipc), routing_id(std::move(key)),
          server_(server) {}

    // The frame joins this turn's batch; a batch that would outgrow its size goes to ZeroMQ
    // first, never with the frame being added, so that a refusal finds the caller's
    // bookkeeping (a request in flight) in place. A refusal is undone only after the frame is
    // added: its errors reuse the buffers that `header` may point into.
    bool send(std::string_view header, std::string_view payload, std::vector<UniqueFd>,
              const Queued& queued) override {
        std::vector<Queued> undo;
        if (!batch_.empty() &&
            batch_.size() + header.size() + payload.size() + 16 > detail::zmq_batch_bytes)
            undo = hand_over();
        frame::append_split(batch_, header, payload);
        batch_items_.push_back(queued);
        batch_items_.back().bytes = payload.size();
        if (!undo.empty()) {
            if (Client* c = server_.router_.find(num))
                for (const auto& q : undo)
                    server_.router_.refused(*c, q);
        }
        if (!listed) {
            listed = true;
            server_.list_unflushed(num);
        }
        return true;
    }

    void close() override { server_.by_routing_id_.erase(routing_id); }

    // Hands the batch to ZeroMQ. Refused (the peer's queue is at SNDHWM), the batch's
    // messages are returned for the caller to undo.
    std::vector<Queued> hand_over() {
        std::vector<Queued> items;
        if (batch_.empty())
            return items;
        bool sent = false;
        try {
            zmq::message_t msg(batch_.data(), batch_.size());
            // ROUTER checks the peer's queue on the first part only: if that is accepted, the
            // other is too.
            auto& socket = *server_.socket_;
            if (socket.send(zmq::buffer(std::string_view(routing_id).substr(1)),
                            zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
                socket.send(msg, zmq::send_flags::none);
                server_.watch_->kick();
                sent = true;
            }
        } catch (const zmq::error_t& e) {
            if (e.num() == EHOSTUNREACH) {
                // Gone. Removing it here would pull the client out from under the caller.
                boost::asio::post(server_.io_, [&router = server_.router_, n = num,
                                                alive = std::weak_ptr<int>(server_.alive_)] {
                    if (!alive.expired())
                        router.remove(n);
                });
            }
        }
        batch_.clear();
        if (sent)
            batch_items_.clear(); // keeps its capacity for the next batch
        else
            items.swap(batch_items_);
        return items;
    }

    std::uint64_t num = 0;
    const std::string routing_id; // "i" or "t" + ZeroMQ's identity (ipc and tcp ids may repeat)
    bool listed = false;          // in unflushed_

private:
    ZmqServer& server_;
    std::string batch_;
    std::vector<Queued> batch_items_;
};

ZmqServer::ZmqServer(boost::asio::io_context& io, Router& router, const Options& options, bool tcp)
    : io_(io), router_(router), options_(options), tcp_(tcp) {}

ZmqServer::~ZmqServer() {
    watch_.reset();
    monitor_watch_.reset();
    if (monitor_)
        monitor_->close();
    if (socket_)
        socket_->close();
}

Result<std::unique_ptr<ZmqServer>> ZmqServer::bind(boost::asio::io_context& io,
                                                   zmq::context_t& context, Router& router,
                                                   const Options& options,
                                                   const Endpoint& endpoint) {
    const bool tcp = endpoint.scheme == Endpoint::Scheme::tcp;
    if (tcp && (options.curve_secret_key.size() != 40 || options.curve_public_key.size() != 40))
        return make_error_code(errc::forbidden); // tcp:// only with CURVE keys
    if (!tcp) {
        if (auto ec = detail::claim_socket_path(endpoint.address))
            return ec;
    }
    std::unique_ptr<ZmqServer> server(new ZmqServer(io, router, options, tcp));
    try {
        auto& socket = server->socket_;
        socket = std::make_unique<zmq::socket_t>(context, zmq::socket_type::router);
        socket->set(zmq::sockopt::router_mandatory, 1);
        // ZeroMQ counts messages, which are batches here: as many as client_queue_bytes holds
        // in full batches, so the bound stays in bytes too.
        const auto batches = static_cast<int>(std::clamp<std::size_t>(
            options.limits.client_queue_bytes / detail::zmq_batch_bytes, 16,
            static_cast<std::size_t>(options.limits.client_queue_messages)));
        socket->set(zmq::sockopt::sndhwm, batches);
        socket->set(zmq::sockopt::rcvhwm, batches);
        socket->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(options.limits.max_message_size +
                                                                   64 * 1024 + frame::header_size));
        socket->set(zmq::sockopt::linger, 0);
        if (tcp) {
            // Clients must know the server's public key; without it the handshake fails.
            socket->set(zmq::sockopt::curve_server, 1);
            socket->set(zmq::sockopt::curve_secretkey, options.curve_secret_key);
            socket->set(zmq::sockopt::curve_publickey, options.curve_public_key);
            socket->bind(endpoint.str());
        } else {
            const mode_t old = ::umask(0177); // the socket file is created 0600
            try {
                socket->bind(endpoint.str());
            } catch (...) {
                ::umask(old);
                throw;
            }
            ::umask(old);
        }
        // Disconnections, to find ZeroMQ clients that went away without a word.
        const std::string monitor_address =
            "inproc://busd-monitor-" +
            std::to_string(reinterpret_cast<std::uintptr_t>(server.get()));
        if (zmq_socket_monitor(socket->handle(), monitor_address.c_str(), ZMQ_EVENT_DISCONNECTED) !=
            0) {
            const auto ec = last_error();
            if (!tcp)
                ::unlink(endpoint.address.c_str());
            return ec;
        }
        server->monitor_ = std::make_unique<zmq::socket_t>(context, zmq::socket_type::pair);
        server->monitor_->connect(monitor_address);
    } catch (const zmq::error_t& e) {
        return std::error_code(e.num(), std::system_category());
    }
    ZmqServer* z = server.get();
    z->watch_ = std::make_unique<detail::ZmqWatch>(io, *z->socket_, [z] { z->read(); });
    z->monitor_watch_ =
        std::make_unique<detail::ZmqWatch>(io, *z->monitor_, [z] { z->read_monitor(); });
    z->watch_->start();
    z->monitor_watch_->start();
    return server;
}

void ZmqServer::read() {
    for (int i = 0; i < messages_per_wakeup; ++i) {
        zmq::message_t identity, body;
        try {
            if (!socket_->recv(identity, zmq::recv_flags::dontwait))
                return;
            // Expected: [identity][one or more channel frames]. Anything else is malformed; the
            // rest of it is drained so the next message starts clean.
            bool ok = identity.more() && socket_->recv(body, zmq::recv_flags::dontwait);
            if (ok && body.more()) {
                ok = false;
                zmq::message_t extra;
                while (socket_->get(zmq::sockopt::rcvmore) &&
                       socket_->recv(extra, zmq::recv_flags::dontwait)) {
                }
            }
            Client& c = client_for(identity, body);
            c.last_seen = std::chrono::steady_clock::now();
            if (!c.allowed)
                continue;
            if (!ok) {
                router_.send_error(c, 0, errc::bad_frame, "malformed message");
                continue;
            }
            read_frames(c.num, body.to_string_view());
        } catch (const zmq::error_t&) {
            return;
        }
    }
}

// The frames of one ZeroMQ message, in order; a malformed one ends the message.
void ZmqServer::read_frames(std::uint64_t num, std::string_view frames) {
    std::vector<UniqueFd> no_fds;
    while (!frames.empty()) {
        Client* c = router_.find(num);
        if (!c)
            return;
        auto body = frame::take_frame(frames, options_.limits.max_message_size + 64 * 1024);
        auto payload =
            body ? frame::split(body.value(), in_) : Result<std::string_view>(errc::bad_frame);
        if (!payload || !in_.payload().empty())
            return router_.send_error(*c, 0, errc::bad_frame, "malformed message");
        if (in_.fd_count() != 0) {
            router_.send_error(*c, in_.id(), errc::fds_not_supported,
                               "file descriptors need a unix:// link");
            continue;
        }
        router_.handle(*c, in_, payload.value(), no_fds);
    }
}

// `first` is a frame that came from the peer: its metadata holds the peer's credentials (the
// identity frame is made by the ROUTER and carries none).
Client& ZmqServer::client_for(const zmq::message_t& identity, const zmq::message_t& first) {
    std::string key = (tcp_ ? "t" : "i") + std::string(identity.to_string_view());
    if (auto it = by_routing_id_.find(key); it != by_routing_id_.end())
        return *router_.find(it->second);
    auto peer = std::make_unique<Peer>(*this, key);
    Peer& link = *peer;
    Client& c = router_.add(std::move(peer));
    link.num = c.num;
    by_routing_id_.emplace(std::move(key), c.num);
    if (tcp_) {
        // Authenticated by CURVE (it knew the server's key); there is no uid to check.
        c.uid = c.gid = ~0u;
        c.allowed = true;
        return c;
    }
    // libzmq reports an ipc peer's kernel credentials as "localhost:uid:gid:pid". Without them
    // (a malformed first message) the peer is not let in.
    bool credentials = false;
    if (const char* address = zmq_msg_gets(first.handle(), "Peer-Address")) {
        std::string_view p(address);
        std::uint32_t fields[3] = {};
        for (int f = 2; f >= 0; --f) {
            const auto colon = p.rfind(':');
            if (colon == std::string_view::npos)
                break;
            std::from_chars(p.data() + colon + 1, p.data() + p.size(), fields[f]);
            p = p.substr(0, colon);
        }
        c.uid = fields[0];
        c.gid = fields[1];
        c.pid = fields[2];
        credentials = p.size() > 0 || fields[2] != 0;
    }
    c.allowed = credentials && router_.access().allowed(c.uid, c.gid);
    c.rule = router_.access().rule_for(c.uid, c.gid);
    return c;
}

void ZmqServer::read_monitor() {
    // Some peer disconnected; ROUTER does not say which. Ping every one: with
    // ROUTER_MANDATORY, a send to a gone peer fails with EHOSTUNREACH at once.
    zmq::message_t event;
    bool any = false;
    while (monitor_->recv(event, zmq::recv_flags::dontwait)) {
        if (!event.more())
            any = true;
    }
    if (!any)
        return;
    std::vector<std::uint64_t> peers;
    for (const auto& [key, num] : by_routing_id_)
        peers.push_back(num);
    for (auto num : peers)
        if (auto* c = router_.find(num))
            router_.send_control(*c, "ping", nullptr, 0);
}

void ZmqServer::list_unflushed(std::uint64_t num) {
    if (unflushed_.empty())
        boost::asio::post(io_, [this, alive = std::weak_ptr<int>(alive_)] {
            if (!alive.expired())
                flush_all();
        });
    unflushed_.push_back(num);
}

void ZmqServer::flush_all() {
    // A refusal sends errors, which may list more clients: by index, not iterator.
    for (std::size_t i = 0; i < unflushed_.size(); ++i) {
        Client* c = router_.find(unflushed_[i]);
        if (!c)
            continue;
        auto& peer = static_cast<Peer&>(*c->link);
        peer.listed = false;
        for (const auto& q : peer.hand_over())
            router_.refused(*c, q);
    }
    unflushed_.clear();
}

} // namespace bus::broker
