#include "bus/cluster.hpp"

#include "bus/endpoint.hpp"
#include "bus/frame.hpp"
#include "bus/v1/cluster.pb.h"
#include "cluster/node_primary.hpp"
#include "cluster/wire.hpp"
#include "transport/sockets.hpp"

#include <boost/asio/post.hpp>

#include <csignal>
#include <cstdlib>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace bus::cluster {

using detail::control_is;
using detail::send_control;

Result<std::unique_ptr<Worker>> Worker::from_parent(boost::asio::io_context& io) {
    auto channel = Channel::from_parent(io);
    if (!channel)
        return channel.error();
    const bool node = channel.value()->options().serialization == Serialization::node_json;
    const char* node_id = std::getenv("NODE_UNIQUE_ID");
    if (node && !node_id)
        return errc::no_parent_channel; // a Node child, but not a cluster worker
    auto worker = adopt(io, std::move(channel).value());
    if (node) {
        // As Node's own workers do, so that a child of this worker is not taken for one.
        const int id = std::atoi(node_id);
        ::unsetenv("NODE_UNIQUE_ID");
        worker->node_start(id);
    }
    worker->signals_ = std::make_unique<boost::asio::signal_set>(io, SIGTERM);
    worker->signals_->async_wait([w = worker.get()](boost::system::error_code ec, int) {
        if (!ec)
            w->shutdown(default_grace);
    });
    return worker;
}

Result<std::unique_ptr<Worker>> Worker::join(boost::asio::io_context& io, const std::string& app,
                                             const std::string& endpoint,
                                             std::chrono::milliseconds timeout,
                                             std::string* reason) {
    auto busd = endpoint.empty() ? default_endpoint() : Result<std::string>(endpoint);
    if (!busd)
        return busd.error();
    auto path = cluster_socket_beside(busd.value());
    if (!path)
        return path.error();
    auto connected = bus::detail::connect_unix(path.value());
    if (!connected) {
        if (reason)
            *reason =
                "no busd cluster socket at " + path.value() + ": " + connected.error().message();
        return make_error_code(errc::broker_unavailable);
    }
    UniqueFd fd = std::move(connected).value();
    // The handshake is blocking and reads exactly one frame, so that nothing busd sends after
    // its answer is taken from the socket before the Channel owns it.
    v1::Join request;
    request.set_app(app);
    v1::Envelope envelope;
    envelope.set_kind(v1::KIND_CONTROL);
    envelope.set_type_url(frame::type_url_of(request));
    request.SerializeToString(envelope.mutable_payload());
    std::string out;
    frame::append(out, envelope);
    if (::send(fd.get(), out.data(), out.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(out.size()))
        return std::error_code(errno, std::system_category());
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto read_exactly = [&](char* into, std::size_t n) -> std::error_code {
        while (n > 0) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            pollfd p{fd.get(), POLLIN, 0};
            const int ready =
                ::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(0, left.count())));
            if (ready == 0)
                return make_error_code(errc::timeout);
            if (ready < 0 && errno == EINTR)
                continue;
            const ssize_t got = ready < 0 ? -1 : ::recv(fd.get(), into, n, 0);
            if (got == 0)
                return make_error_code(errc::channel_closed);
            if (got < 0 && errno == EINTR)
                continue;
            if (got < 0)
                return {errno, std::system_category()};
            into += got;
            n -= static_cast<std::size_t>(got);
        }
        return {};
    };
    unsigned char header[frame::header_size];
    if (auto ec = read_exactly(reinterpret_cast<char*>(header), sizeof header))
        return ec;
    const std::uint32_t length =
        header[0] | header[1] << 8 | header[2] << 16 | static_cast<std::uint32_t>(header[3]) << 24;
    if (length > 64 * 1024)
        return make_error_code(errc::frame_too_large);
    std::string body(length, '\0');
    if (auto ec = read_exactly(body.data(), body.size()))
        return ec;
    v1::JoinAck ack;
    if (!envelope.ParseFromString(body) || envelope.kind() != v1::KIND_CONTROL ||
        envelope.type_url() != frame::type_url_of(ack) || !ack.ParseFromString(envelope.payload()))
        return make_error_code(errc::bad_frame);
    if (!ack.accepted()) {
        if (reason)
            *reason = ack.reason();
        return make_error_code(errc::request_failed);
    }
    auto channel = Channel::adopt(io, std::move(fd));
    if (!channel)
        return channel.error();
    auto worker = adopt(io, std::move(channel).value());
    worker->app_ = app;
    worker->instance_ = static_cast<int>(ack.instance());
    return worker;
}

std::unique_ptr<Worker> Worker::adopt(boost::asio::io_context& io,
                                      std::shared_ptr<Channel> channel) {
    return std::unique_ptr<Worker>(new Worker(io, std::move(channel)));
}

Worker::Worker(boost::asio::io_context& io, std::shared_ptr<Channel> channel)
    : io_(io), channel_(std::move(channel)), load_timer_(io) {
    if (const char* app = std::getenv("BUS_APP"))
        app_ = app;
    if (const char* instance = std::getenv("BUS_INSTANCE"))
        instance_ = std::atoi(instance);
    channel_->on_message([this](Message& m) { handle(m); });
    channel_->on_disconnect([this](std::error_code) { shutdown(default_grace); });
}

Worker::~Worker() {
    if (signals_)
        signals_->cancel();
    channel_->on_message({});
    channel_->on_disconnect({});
    channel_->close();
}

void Worker::ready() {
    if (node_)
        return node_ready();
    v1::Ready ready;
    ready.set_pid(static_cast<std::uint32_t>(::getpid()));
    send_control(*channel_, ready);
}

void Worker::report_load(std::uint32_t open_connections) {
    load_ = open_connections;
    if (load_timer_armed_ || node_)
        return; // the timer sends the latest value
    const auto now = std::chrono::steady_clock::now();
    if (now - last_load_sent_ >= load_interval) {
        send_load();
        return;
    }
    load_timer_armed_ = true;
    load_timer_.expires_at(last_load_sent_ + load_interval);
    load_timer_.async_wait(
        [this, alive = std::weak_ptr<int>(alive_)](boost::system::error_code ec) {
            if (ec || alive.expired())
                return;
            load_timer_armed_ = false;
            send_load();
        });
}

void Worker::send_load() {
    last_load_sent_ = std::chrono::steady_clock::now();
    v1::Load load;
    load.set_connections(load_);
    send_control(*channel_, load);
}

void Worker::request_replacement(const std::string& reason) {
    if (node_)
        return; // a Node primary has no such request
    v1::RequestReplacement request;
    request.set_reason(reason);
    send_control(*channel_, request);
}

void Worker::handle(Message& m) {
    v1::NewConn conn;
    v1::Heartbeat beat;
    v1::Shutdown stop;
    v1::Listen listen_to;
    if (control_is(m, listen_to)) {
        listen(listen_to.address(), listen_to.reuseport(), m.fds);
    } else if (control_is(m, conn)) {
        v1::NewConnAck ack;
        ack.set_id(conn.id());
        if (m.fds.size() != 1 || !on_connection_ || shutting_down_) {
            // Not ours to serve: busd gives it to another worker.
            ack.set_accepted(false);
            ack.set_reason(m.fds.size() != 1 ? "no descriptor" : "not accepting");
            send_control(*channel_, ack);
            return;
        }
        Connection c{std::move(m.fds.front()), conn.peer_address(), conn.local_address(),
                     conn.id()};
        on_connection_(std::move(c));
        ack.set_accepted(true);
        send_control(*channel_, ack);
    } else if (control_is(m, beat)) {
        beat.set_connections(load_);
        send_control(*channel_, beat);
    } else if (control_is(m, stop)) {
        shutdown(std::chrono::milliseconds(stop.grace_ms()));
    }
    // Anything else is for a newer worker library: ignored.
}

void Worker::listen(const std::string& address, bool reuseport, std::vector<UniqueFd>& fds) {
    v1::Listening answer;
    answer.set_address(address);
    UniqueFd fd;
    if (reuseport) {
        auto bound = bus::detail::listen_tcp(address, true);
        if (bound)
            fd = std::move(bound).value();
        else
            answer.set_error(bound.error().message());
    } else if (fds.size() == 1) {
        fd = std::move(fds.front());
    } else {
        answer.set_error("no listening socket came with the message");
    }
    if (fd)
        add_listener(std::move(fd));
    send_control(*channel_, answer);
}

void Worker::add_listener(UniqueFd fd) {
    if (shutting_down_)
        return;
    const std::string bound = bus::detail::local_address_text(fd.get());
    listeners_.push_back(std::make_unique<Listener>(io_, fd.release(), bound));
    accept(*listeners_.back());
}

void Worker::accept(Listener& l) {
    l.socket.async_wait(
        boost::asio::posix::stream_descriptor::wait_read,
        [this, &l, alive = std::weak_ptr<int>(alive_)](boost::system::error_code ec) {
            if (!ec && !alive.expired() && !shutting_down_)
                accept_batch(l);
        });
}

// Accepts on the application's loop: until the backlog is empty, 64 per loop turn.
void Worker::accept_batch(Listener& l) {
    std::weak_ptr<int> alive = alive_;
    for (int i = 0; i < 64; ++i) {
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        const int fd = ::accept4(l.socket.native_handle(), reinterpret_cast<sockaddr*>(&ss), &len,
                                 SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return accept(l); // EAGAIN: the backlog is empty (or another worker took it)
        }
        Connection c{UniqueFd(fd), bus::detail::address_text(ss), l.address, 0};
        if (on_connection_)
            on_connection_(std::move(c));
        if (alive.expired() || shutting_down_)
            return; // the handler shut us down or destroyed us
    }
    // More may wait, and no new edge will say so: once round the loop first.
    boost::asio::post(io_, [this, &l, alive] {
        if (!alive.expired() && !shutting_down_)
            accept_batch(l);
    });
}

void Worker::shutdown(std::chrono::milliseconds grace) {
    if (shutting_down_)
        return;
    shutting_down_ = true;
    listeners_.clear(); // accept no more
    if (node_)
        channel_->close(); // Node's process.disconnect(): the primary sends no more
    if (on_shutdown_)
        on_shutdown_(grace);
    else
        std::exit(0);
}

} // namespace bus::cluster
