#include "broker/unix_server.hpp"

#include "bus/channel.hpp"
#include "transport/sockets.hpp"

#include <fcntl.h>
#include <sys/socket.h>

namespace bus::broker {
namespace {

namespace asio = boost::asio;

class ChannelLink final : public Link {
public:
    ChannelLink(std::shared_ptr<Channel> channel, std::size_t queue_bytes)
        : Link(Kind::channel), channel_(std::move(channel)), queue_bytes_(queue_bytes) {}
    ~ChannelLink() override { close(); }

    bool send(std::string_view header, std::string_view payload, std::vector<UniqueFd> fds,
              const Queued&) override {
        if (!ready())
            return false;
        channel_->send_split(header, payload, std::move(fds));
        return true;
    }
    bool ready() const override {
        return channel_->connected() && channel_->queued_bytes() < queue_bytes_;
    }
    std::size_t queued_bytes() const override { return channel_->queued_bytes(); }
    // The router is done with the client: the channel's end, reported from the loop later,
    // must not reach back into a router that may be gone by then.
    void close() override {
        channel_->on_disconnect(nullptr);
        channel_->disconnect();
    }

private:
    std::shared_ptr<Channel> channel_;
    const std::size_t queue_bytes_;
};

} // namespace

std::error_code UnixServer::listen(const std::string& path) {
    if (acceptor_)
        return make_error_code(errc::bad_endpoint); // one unix:// endpoint
    auto fd = detail::listen_unix(path);
    if (!fd)
        return fd.error();
    acceptor_ = std::make_unique<asio::local::stream_protocol::acceptor>(
        io_, asio::local::stream_protocol(), fd.value().release());
    accept();
    return {};
}

void UnixServer::accept() {
    acceptor_->async_accept(
        [this, alive = std::weak_ptr<int>(alive_)](boost::system::error_code ec,
                                                   asio::local::stream_protocol::socket socket) {
            if (ec == asio::error::operation_aborted || alive.expired())
                return;
            if (!ec)
                adopt(UniqueFd(socket.release()));
            accept();
        });
}

void UnixServer::adopt(UniqueFd fd, pid_t pid, bool bridge) {
    ::fcntl(fd.get(), F_SETFD, FD_CLOEXEC);
    ChannelOptions channel_options;
    channel_options.max_message_size = options_.limits.max_message_size;
    channel_options.high_water_mark = options_.limits.client_queue_bytes;
    auto channel = Channel::adopt(io_, std::move(fd), channel_options);
    if (channel)
        adopt(std::move(channel).value(), pid, bridge);
}

void UnixServer::adopt(std::shared_ptr<Channel> channel, pid_t pid, bool bridge) {
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(channel->native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
        !router_.access().allowed(cred.uid, cred.gid)) {
        channel->disconnect(); // not ours to serve
        return;
    }
    auto* raw = channel.get();
    Client& c = router_.add(
        std::make_unique<ChannelLink>(std::move(channel), options_.limits.client_queue_bytes));
    c.pid = static_cast<std::uint32_t>(pid ? pid : cred.pid);
    c.uid = cred.uid;
    c.gid = cred.gid;
    c.rule = router_.access().rule_for(c.uid, c.gid);
    c.bridge = bridge;
    const auto num = c.num;
    raw->on_envelope(
        [this, num](v1::Envelope& header, std::string_view payload, std::vector<UniqueFd>& fds) {
            if (auto* client = router_.find(num))
                router_.handle(*client, header, payload, fds);
        });
    raw->on_disconnect([this, num](std::error_code) { router_.remove(num); });
}

} // namespace bus::broker
