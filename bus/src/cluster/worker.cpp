#include "bus/cluster.hpp"

#include "bus/v1/cluster.pb.h"
#include "wire.hpp"

#include <csignal>
#include <cstdlib>
#include <unistd.h>

namespace bus::cluster {

using detail::control_is;
using detail::send_control;

Result<std::unique_ptr<Worker>> Worker::from_parent(boost::asio::io_context& io) {
    auto channel = Channel::from_parent(io);
    if (!channel)
        return channel.error();
    auto worker = adopt(std::move(channel).value());
    worker->signals_ = std::make_unique<boost::asio::signal_set>(io, SIGTERM);
    worker->signals_->async_wait([w = worker.get()](boost::system::error_code ec, int) {
        if (!ec)
            w->shutdown(default_grace);
    });
    return worker;
}

std::unique_ptr<Worker> Worker::adopt(std::shared_ptr<Channel> channel) {
    return std::unique_ptr<Worker>(new Worker(std::move(channel)));
}

Worker::Worker(std::shared_ptr<Channel> channel) : channel_(std::move(channel)) {
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
    v1::Ready ready;
    ready.set_pid(static_cast<std::uint32_t>(::getpid()));
    send_control(*channel_, ready);
}

void Worker::report_load(std::uint32_t open_connections) {
    load_ = open_connections;
    v1::Load load;
    load.set_connections(open_connections);
    send_control(*channel_, load);
}

void Worker::request_replacement(const std::string& reason) {
    v1::RequestReplacement request;
    request.set_reason(reason);
    send_control(*channel_, request);
}

void Worker::handle(Message& m) {
    v1::NewConn conn;
    v1::Heartbeat beat;
    v1::Shutdown stop;
    if (control_is(m, conn)) {
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

void Worker::shutdown(std::chrono::milliseconds grace) {
    if (shutting_down_)
        return;
    shutting_down_ = true;
    if (on_shutdown_)
        on_shutdown_(grace);
    else
        std::exit(0);
}

} // namespace bus::cluster
