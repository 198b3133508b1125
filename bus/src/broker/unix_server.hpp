// UnixServer: busd's unix:// endpoint, and the links busd gives its cluster workers. Each
// client is a Channel speaking the channel framing (u32 length + Envelope, fds by
// SCM_RIGHTS); its credentials come from the kernel (SO_PEERCRED). A channel takes a frame
// while its queue is under the client's byte bound, and refuses it (the message is the
// client's loss alone) past it.
#pragma once

#include "broker/router.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include <memory>
#include <string>

#include <sys/types.h>

namespace bus::broker {

class UnixServer {
public:
    UnixServer(boost::asio::io_context& io, Router& router, const Options& options)
        : io_(io), router_(router), options_(options) {}
    UnixServer(const UnixServer&) = delete;
    UnixServer& operator=(const UnixServer&) = delete;

    // Listens on `path` (a socket file made 0600, which the caller unlinks on exit).
    std::error_code listen(const std::string& path);
    // Serves a client on an already connected socket or channel; `pid` names the client when
    // the kernel's peer credentials name another process (a socketpair's name its creator:
    // busd, for the link it gives a cluster worker).
    void adopt(UniqueFd socket, pid_t pid = 0, bool bridge = false);
    void adopt(std::shared_ptr<Channel> channel, pid_t pid = 0, bool bridge = false);

private:
    void accept();

    boost::asio::io_context& io_;
    Router& router_;
    const Options& options_;
    std::unique_ptr<boost::asio::local::stream_protocol::acceptor> acceptor_;
    // An accept that completed before the server went still runs its handler: it checks this.
    std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

} // namespace bus::broker
