// ZmqWatch: a ZeroMQ socket on an Asio loop.
//
// ZeroMQ exposes ZMQ_FD, which signals that the socket's state *may* have changed, edge-style:
// it does not stay readable while messages wait. So after every wake-up the owner drains while
// ZMQ_EVENTS says so, and after every send it must check again (a send can consume the edge
// that announced incoming messages): kick() schedules that check on the loop.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <zmq.hpp>

#include <functional>
#include <memory>

namespace bus::detail {

// A ZeroMQ link (client <-> busd) carries batches: each ZeroMQ message holds one or more
// channel frames, up to this many bytes unless a single frame is larger. ZeroMQ's costs are per
// message, so a busy link pays them once per batch.
inline constexpr std::size_t zmq_batch_bytes = 16 * 1024;

class ZmqWatch {
public:
    // `on_readable` is called on the loop whenever ZMQ_EVENTS reports ZMQ_POLLIN; it should
    // receive a bounded batch and return. It is called again while input remains. Likewise
    // `on_writable` for ZMQ_POLLOUT, while want_write(true).
    ZmqWatch(boost::asio::io_context& io, zmq::socket_ref socket, std::function<void()> on_readable,
             std::function<void()> on_writable = {})
        : state_(std::make_shared<State>(io, socket, std::move(on_readable))) {
        state_->on_writable = std::move(on_writable);
        state_->fd.assign(socket.get(zmq::sockopt::fd));
    }
    ~ZmqWatch() {
        state_->alive = false;
        boost::system::error_code ignored;
        state_->fd.cancel(ignored);
        (void)state_->fd.release(); // ZeroMQ owns the descriptor
    }
    ZmqWatch(const ZmqWatch&) = delete;
    ZmqWatch& operator=(const ZmqWatch&) = delete;

    void start() { check(state_); }
    void want_write(bool want) {
        state_->want_write = want;
        if (want)
            kick();
    }
    void kick() {
        if (state_->kicked)
            return;
        state_->kicked = true;
        boost::asio::post(state_->fd.get_executor(), [s = state_] {
            s->kicked = false;
            check(s);
        });
    }

private:
    struct State {
        State(boost::asio::io_context& io, zmq::socket_ref s, std::function<void()> f)
            : fd(io), socket(s), on_readable(std::move(f)) {}
        boost::asio::posix::stream_descriptor fd;
        zmq::socket_ref socket;
        std::function<void()> on_readable;
        std::function<void()> on_writable;
        bool want_write = false;
        bool alive = true;
        bool waiting = false;
        bool kicked = false;
    };

    static void check(const std::shared_ptr<State>& s) {
        if (!s->alive)
            return;
        const int events = s->socket.get(zmq::sockopt::events);
        const bool readable = events & ZMQ_POLLIN;
        const bool writable = s->want_write && (events & ZMQ_POLLOUT);
        if (readable || writable) {
            if (readable)
                s->on_readable();
            if (writable && s->alive)
                s->on_writable();
            if (s->alive) // more may wait: come back after other handlers ran
                boost::asio::post(s->fd.get_executor(), [s] { check(s); });
            return;
        }
        if (s->waiting)
            return;
        s->waiting = true;
        s->fd.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                         [s](boost::system::error_code ec) {
                             s->waiting = false;
                             if (!ec)
                                 check(s);
                         });
    }

    std::shared_ptr<State> state_;
};

} // namespace bus::detail
