// The cluster socket (Supervisor::Options::join_path): where workers busd did not start join an
// app (Worker::join). The JoinServer accepts them, lets in only busd's own user (the kernel's
// peer credentials), takes a pidfd of the process, and waits a few seconds for the first
// message, which must be a Join. Which app it joins, and whether it may, is the supervisor's.
#pragma once

#include "bus/channel.hpp"
#include "bus/error.hpp"
#include "bus/unique_fd.hpp"
#include "bus/v1/cluster.pb.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <functional>
#include <memory>
#include <string>

#include <sys/types.h>

namespace bus::cluster::detail {

class JoinServer {
public:
    using Log = std::function<void(const std::string&)>;
    // A worker asking to join: the callee adopts it (the channel and the pidfd, which says when
    // the process exits, are then its own) and returns nothing, or returns why not; the server
    // then answers a JoinAck with that reason and closes the connection.
    using Admit = std::function<std::string(const v1::Join& join, std::shared_ptr<Channel> channel,
                                            pid_t pid, UniqueFd pidfd)>;

    // Listens on the Unix socket `path` (mode 0600; a dead server's socket file is replaced).
    static Result<std::unique_ptr<JoinServer>>
    listen(boost::asio::io_context& io, const std::string& path, Log log, Admit admit);
    // Removes the socket file.
    ~JoinServer();
    JoinServer(const JoinServer&) = delete;
    JoinServer& operator=(const JoinServer&) = delete;

private:
    JoinServer(boost::asio::io_context& io, UniqueFd socket, std::string path, Log log,
               Admit admit);
    void accept();
    void on_connection(UniqueFd fd);
    void on_first_message(const std::shared_ptr<Channel>& conn, Message& m, pid_t pid,
                          UniqueFd pidfd);

    boost::asio::io_context& io_;
    boost::asio::posix::stream_descriptor socket_;
    std::string path_;
    Log log_;
    Admit admit_;
    // Handlers armed on the loop hold this weakly: the server may be gone when they run.
    std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

} // namespace bus::cluster::detail
