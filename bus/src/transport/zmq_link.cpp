#include "transport/zmq_link.hpp"

#include <atomic>
#include <cstring>
#include <string>

namespace bus::detail {

namespace {

// Each link's monitor needs an inproc address of its own.
std::string monitor_address() {
    static std::atomic<std::uint64_t> next{0};
    return "inproc://bus-client-monitor-" + std::to_string(next++);
}

} // namespace

ZmqLink::ZmqLink(boost::asio::io_context& io, const std::string& endpoint,
                 std::size_t max_message_size, const std::string& server_key,
                 std::function<void(Message&)> rx, std::function<void(bool)> on_connection,
                 std::function<void(std::error_code)> on_send_error)
    : io_(io), max_frame_(max_message_size + 64 * 1024),
      socket_(context_, zmq::socket_type::dealer), rx_(std::move(rx)),
      on_connection_(std::move(on_connection)), on_send_error_(std::move(on_send_error)) {
    if (!server_key.empty()) {
        // CURVE with a fresh key pair of our own: the broker authenticates itself to us by
        // its key, and the link is encrypted.
        char public_key[41], secret_key[41];
        if (zmq_curve_keypair(public_key, secret_key) != 0)
            throw zmq::error_t();
        socket_.set(zmq::sockopt::curve_serverkey, server_key);
        socket_.set(zmq::sockopt::curve_publickey, std::string(public_key, 40));
        socket_.set(zmq::sockopt::curve_secretkey, std::string(secret_key, 40));
    }
    socket_.set(zmq::sockopt::linger, 0);
    socket_.set(zmq::sockopt::sndhwm, 1000); // batches
    // What the broker cannot hand over waits in its own bounded queue and is dropped there,
    // counted and reported; a deep queue here would only hide a slow consumer.
    socket_.set(zmq::sockopt::rcvhwm, 256);
    socket_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(max_frame_ + frame::header_size));
    socket_.set(zmq::sockopt::reconnect_ivl, 50);
    socket_.set(zmq::sockopt::reconnect_ivl_max, 1000);
    if (on_connection_) {
        // Up once ZeroMQ's handshake is through (a connection alone is accepted by the
        // kernel even for a stopped broker), down each way a connection ends or fails to
        // start. (Not CONNECT_DELAYED: a tcp:// connect in progress is not a failure yet.)
        const auto address = monitor_address();
        const int events = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED |
                           ZMQ_EVENT_CONNECT_RETRIED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                           ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
        if (zmq_socket_monitor(socket_.handle(), address.c_str(), events) != 0)
            throw zmq::error_t();
        monitor_ = zmq::socket_t(context_, zmq::socket_type::pair);
        monitor_.set(zmq::sockopt::linger, 0);
        monitor_.connect(address);
        monitor_watch_ =
            std::make_unique<detail::ZmqWatch>(io, monitor_, [this] { read_monitor(); });
        monitor_watch_->start();
    }
    socket_.connect(endpoint);
    watch_ = std::make_unique<detail::ZmqWatch>(
        io, socket_, [this] { read(); }, [this] { write_pending(); });
    watch_->start();
}

// A monitor event is two frames: 6 bytes (the event, 16 bits, and a value, 32 bits, in host
// order), then the endpoint it is about.
void ZmqLink::read_monitor() {
    auto alive = std::weak_ptr<void>(alive_); // the handler may drop the link
    for (int i = 0; i < 64; ++i) {
        zmq::message_t event, where;
        try {
            if (!monitor_.recv(event, zmq::recv_flags::dontwait))
                return;
            if (event.more())
                (void)monitor_.recv(where, zmq::recv_flags::dontwait);
        } catch (const zmq::error_t&) {
            return;
        }
        if (event.size() < sizeof(std::uint16_t))
            continue;
        std::uint16_t id = 0;
        std::memcpy(&id, event.data(), sizeof id);
        on_connection_(id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED);
        if (alive.expired())
            return;
    }
}

void ZmqLink::close(std::chrono::steady_clock::time_point deadline) {
    flush();
    monitor_watch_.reset();
    watch_.reset(); // nothing is read any more: what arrives now has nobody to go to
    on_connection_ = nullptr;
    auto left = [&] {
        return std::max<std::int64_t>(0, std::chrono::duration_cast<std::chrono::milliseconds>(
                                             deadline - std::chrono::steady_clock::now())
                                             .count());
    };
    try {
        // What waits here (ZeroMQ's queue was full) goes in as room appears, until the
        // deadline; then ZeroMQ keeps delivering its queue for what is left of it.
        while (!pending_.empty()) {
            socket_.set(zmq::sockopt::sndtimeo, static_cast<int>(left()));
            if (!socket_.send(pending_.front(), zmq::send_flags::none))
                break; // the deadline passed
            pending_.pop_front();
        }
        socket_.set(zmq::sockopt::linger, static_cast<int>(left()));
    } catch (const zmq::error_t&) {
    }
    pending_.clear();
}

void ZmqLink::flush() {
    if (batch_.empty() || !watch_) // (nothing is sent after close())
        return;
    zmq::message_t msg(batch_.data(), batch_.size());
    batch_.clear();
    if (pending_.empty()) {
        try {
            if (try_send(msg)) {
                watch_->kick();
                return;
            }
        } catch (const zmq::error_t& e) {
            if (on_send_error_)
                on_send_error_(std::error_code(e.num(), std::system_category()));
            return;
        }
    }
    pending_.push_back(std::move(msg));
    watch_->want_write(true);
}

bool ZmqLink::try_send(zmq::message_t& msg) {
    // cppzmq returns no value for EAGAIN (the queue is full: wait for room) and throws for
    // every other error, which waiting would not cure.
    return socket_.send(msg, zmq::send_flags::dontwait).has_value();
}

void ZmqLink::write_pending() {
    while (!pending_.empty()) {
        try {
            if (!try_send(pending_.front()))
                break;
        } catch (const zmq::error_t& e) {
            if (on_send_error_)
                on_send_error_(std::error_code(e.num(), std::system_category()));
        }
        pending_.pop_front();
    }
    if (pending_.empty())
        watch_->want_write(false);
}

void ZmqLink::read() {
    for (int i = 0; i < 256; ++i) {
        zmq::message_t msg;
        try {
            if (!socket_.recv(msg, zmq::recv_flags::dontwait))
                return;
            if (msg.more()) { // not from a broker: drop the whole message
                zmq::message_t rest;
                while (socket_.get(zmq::sockopt::rcvmore) &&
                       socket_.recv(rest, zmq::recv_flags::dontwait)) {
                }
                continue;
            }
        } catch (const zmq::error_t&) {
            return;
        }
        auto alive = std::weak_ptr<void>(alive_); // a handler may close the client
        for (auto frames = msg.to_string_view(); !frames.empty();) {
            auto body = frame::take_frame(frames, max_frame_);
            if (!body)
                break; // not from a broker: ignore the rest
            if (!message_.view(body.value()))
                continue;
            rx_(message_);
            if (alive.expired())
                return;
        }
    }
}

} // namespace bus::detail
