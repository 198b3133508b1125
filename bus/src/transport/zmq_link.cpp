#include "transport/zmq_link.hpp"

namespace bus::detail {

ZmqLink::ZmqLink(boost::asio::io_context& io, const std::string& endpoint,
                 std::size_t max_message_size, const std::string& server_key,
                 std::function<void(Message&)> rx)
    : io_(io), max_frame_(max_message_size + 64 * 1024),
      socket_(context_, zmq::socket_type::dealer), rx_(std::move(rx)) {
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
    socket_.connect(endpoint);
    watch_ = std::make_unique<detail::ZmqWatch>(
        io, socket_, [this] { read(); }, [this] { write_pending(); });
    watch_->start();
}

void ZmqLink::flush() {
    if (batch_.empty())
        return;
    zmq::message_t msg(batch_.data(), batch_.size());
    batch_.clear();
    if (pending_.empty() && try_send(msg)) {
        watch_->kick();
        return;
    }
    pending_.push_back(std::move(msg));
    watch_->want_write(true);
}

bool ZmqLink::try_send(zmq::message_t& msg) {
    try {
        return socket_.send(msg, zmq::send_flags::dontwait).has_value();
    } catch (const zmq::error_t&) {
        return false;
    }
}

void ZmqLink::write_pending() {
    while (!pending_.empty() && try_send(pending_.front()))
        pending_.pop_front();
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
