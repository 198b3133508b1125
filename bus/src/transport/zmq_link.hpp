// ZmqLink: a client's ZeroMQ link to busd (a DEALER on ipc:// or tcp://, CURVE on tcp://), on
// the Asio loop. The channel framing travels in batches: what one loop turn sends goes as one
// ZeroMQ message holding its channel frames (docs/protocol.md), and each frame that arrives is
// handed to `rx` as a Message. bus::Client uses it as its link when the endpoint is ZeroMQ's.
//
// ZeroMQ hides its connection; a socket monitor shows it: `on_connection(true)` when a
// connection to the endpoint is made, `on_connection(false)` when it is lost or an attempt
// fails (nobody listens there). What was queued while there was no connection stays queued
// for the next one, as ZeroMQ does: a client that must not deliver it late drops the link.
#pragma once

#include "bus/frame.hpp"
#include "bus/message.hpp"
#include "transport/zmq_watch.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <zmq.hpp>

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace bus::detail {

class ZmqLink {
public:
    // Connects to `endpoint` (ZeroMQ reconnects by itself); `server_key` (Z85) for tcp://.
    // Throws zmq::error_t when the socket cannot be set up.
    ZmqLink(boost::asio::io_context& io, const std::string& endpoint, std::size_t max_message_size,
            const std::string& server_key, std::function<void(Message&)> rx,
            std::function<void(bool connected)> on_connection = {},
            std::function<void(std::error_code)> on_send_error = {});
    ~ZmqLink() {
        monitor_watch_.reset();
        watch_.reset();
    }
    ZmqLink(const ZmqLink&) = delete;
    ZmqLink& operator=(const ZmqLink&) = delete;

    // What one loop turn sends travels as one ZeroMQ message, a batch of channel frames (ZeroMQ
    // costs per message, not per byte). Batches go into ZeroMQ's own queue, bounded by SNDHWM;
    // when it is full they wait here, in order, and send() says so, as a channel does past
    // its high-water mark: false.
    bool send(const v1::Envelope& header, std::string_view payload) {
        if (!batch_.empty() &&
            batch_.size() + header.ByteSizeLong() + payload.size() + 16 > detail::zmq_batch_bytes)
            flush();
        frame::append_split(batch_, header, payload);
        if (!flush_posted_) {
            flush_posted_ = true;
            boost::asio::post(io_, [this, alive = std::weak_ptr<void>(alive_)] {
                if (alive.expired())
                    return;
                flush_posted_ = false;
                flush();
            });
        }
        return pending_.empty();
    }

    // Hands what is queued here to ZeroMQ and lets it deliver for up to `deadline` (its
    // ZMQ_LINGER) when the link is destroyed: for a client closing, whose loop may never run
    // again. The link sends nothing more.
    void close(std::chrono::steady_clock::time_point deadline);

private:
    void flush();
    // False when ZeroMQ's queue is full (EAGAIN); other errors throw zmq::error_t.
    bool try_send(zmq::message_t& msg);
    void write_pending();
    void read();
    void read_monitor();

    boost::asio::io_context& io_;
    std::shared_ptr<int> alive_ = std::make_shared<int>(0); // expires with the link
    std::size_t max_frame_;
    std::string batch_;
    bool flush_posted_ = false;
    zmq::context_t context_{1};
    zmq::socket_t socket_;
    std::function<void(Message&)> rx_;
    std::function<void(bool)> on_connection_;
    std::function<void(std::error_code)> on_send_error_; // a batch ZeroMQ refused, dropped
    std::unique_ptr<detail::ZmqWatch> watch_;
    zmq::socket_t monitor_; // the PAIR end of socket_'s monitor
    std::unique_ptr<detail::ZmqWatch> monitor_watch_;
    std::deque<zmq::message_t> pending_;
    Message message_; // reused for deliveries; a ZeroMQ link carries no fds
};

} // namespace bus::detail
