// JoinServer (join_server.hpp): accepting on the cluster socket, the peer's credentials and the
// first message.
#include "cluster/join_server.hpp"

#include "cluster/wire.hpp"
#include "transport/sockets.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <cerrno>
#include <chrono>
#include <utility>

#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace bus::cluster::detail {

Result<std::unique_ptr<JoinServer>>
JoinServer::listen(boost::asio::io_context& io, const std::string& path, Log log, Admit admit) {
    auto fd = bus::detail::listen_unix(path);
    if (!fd)
        return fd.error();
    std::unique_ptr<JoinServer> server(
        new JoinServer(io, std::move(fd).value(), path, std::move(log), std::move(admit)));
    server->accept();
    return server;
}

JoinServer::JoinServer(boost::asio::io_context& io, UniqueFd socket, std::string path, Log log,
                       Admit admit)
    : io_(io), socket_(io, socket.release()), path_(std::move(path)), log_(std::move(log)),
      admit_(std::move(admit)) {}

JoinServer::~JoinServer() {
    ::unlink(path_.c_str());
}

void JoinServer::accept() {
    socket_.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                       [this, alive = std::weak_ptr<int>(alive_)](boost::system::error_code ec) {
                           if (ec || alive.expired())
                               return;
                           for (;;) {
                               UniqueFd fd(::accept4(socket_.native_handle(), nullptr, nullptr,
                                                     SOCK_NONBLOCK | SOCK_CLOEXEC));
                               if (!fd) {
                                   if (errno == EINTR || errno == ECONNABORTED)
                                       continue;
                                   break;
                               }
                               on_connection(std::move(fd));
                           }
                           accept();
                       });
}

void JoinServer::on_connection(UniqueFd fd) {
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
        cred.uid != ::geteuid()) {
        log_("cluster socket: refused a worker of uid " + std::to_string(cred.uid) +
             " (only busd's own user may join)");
        return;
    }
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, cred.pid, 0)));
    auto channel = Channel::adopt(io_, std::move(fd));
    if (!channel)
        return;
    auto conn = channel.value();
    // Until Join: one message, within a few seconds, or the connection is closed.
    auto timer = std::make_shared<boost::asio::steady_timer>(io_, std::chrono::seconds(5));
    timer->async_wait([conn](boost::system::error_code ec) {
        if (!ec)
            conn->close();
    });
    auto watch = std::make_shared<UniqueFd>(std::move(pidfd));
    auto answered = std::make_shared<bool>(false);
    conn->on_message([this, conn, timer, watch, answered, pid = cred.pid,
                      alive = std::weak_ptr<int>(alive_)](Message& m) {
        // Only the first message counts (a worker waits for the answer before it says more).
        // It is handled after this call: the handlers it replaces are running now.
        if (std::exchange(*answered, true))
            return;
        timer->cancel();
        auto first = std::make_shared<Message>(std::move(m));
        boost::asio::post(io_, [this, conn, first, watch, pid, alive] {
            if (alive.expired())
                return conn->close();
            conn->on_disconnect({});
            on_first_message(conn, *first, pid, std::move(*watch));
        });
    });
    conn->on_disconnect([conn, timer](std::error_code) { timer->cancel(); });
}

void JoinServer::on_first_message(const std::shared_ptr<Channel>& conn, Message& m, pid_t pid,
                                  UniqueFd pidfd) {
    v1::Join join;
    v1::JoinAck ack;
    if (!control_is(m, join) || !m.fds.empty())
        ack.set_reason("the first message must be a bus.v1.Join");
    else
        ack.set_reason(admit_(join, conn, pid, std::move(pidfd)));
    if (ack.reason().empty())
        return; // adopted
    log_("cluster socket: refused pid " + std::to_string(pid) + ": " + ack.reason());
    conn->on_message({});
    send_control(*conn, ack);
    conn->close();
}

} // namespace bus::cluster::detail
