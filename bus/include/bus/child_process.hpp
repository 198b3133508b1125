// spawn(): start a child process with a Channel to it, as Node's child_process.fork() does.
//
// The child finds its end of the channel on the fd named by BUS_CHANNEL_FD (or, for a Node
// child, NODE_CHANNEL_FD with NODE_CHANNEL_SERIALIZATION_MODE=json) and picks it up with
// Channel::from_parent(). Exit is observed through a pidfd on the same io_context, so there is
// no SIGCHLD handler to share with the application and no pid-reuse race on kill().
#pragma once

#include "bus/channel.hpp"

#include <boost/asio/posix/stream_descriptor.hpp>

#include <csignal>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <sys/types.h>

namespace bus {

struct SpawnOptions {
    // Serialization node_json starts a Node.js child: `node child.js` gets NODE_CHANNEL_FD.
    ChannelOptions channel;
    // "NAME=VALUE" entries added to (or replacing those of) this process's environment.
    std::vector<std::string> env;
    // Working directory of the child; empty for this process's.
    std::string cwd;
    // The descriptor number the channel gets in the child (Node uses its stdio index).
    int channel_fd = 3;
    // Sent to the child when this process dies (PR_SET_PDEATHSIG), so a parent killed outright
    // leaves no orphan; 0 for none. Set before exec: a child whose parent is already gone gets
    // it at once.
    int parent_death_signal = 0;
    // Descriptors the child gets as its stdout and stderr (busd's cluster passes pipes to
    // capture worker output); -1: this process's own.
    int stdout_fd = -1;
    int stderr_fd = -1;
    // More descriptors for the child: (fd here, its number in the child), e.g. busd's second
    // channel to a cluster worker, for Client::from_parent.
    std::vector<std::pair<int, int>> inherit;
};

class ChildProcess : public std::enable_shared_from_this<ChildProcess> {
public:
    // exit_code is the status passed to exit(), or -1 when a signal ended the child;
    // term_signal is that signal, or 0.
    using ExitHandler = std::function<void(int exit_code, int term_signal)>;

    // Destroying a ChildProcess whose child still runs kills it (SIGKILL) and reaps it: no
    // orphans, no zombies. Keep the object for as long as the child should live.
    ~ChildProcess();
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;

    pid_t pid() const noexcept { return pid_; }
    const std::shared_ptr<Channel>& channel() const noexcept { return channel_; }
    bool running() const noexcept { return running_; }

    // Signals the child (through its pidfd). ESRCH once it has been reaped.
    std::error_code kill(int signal = SIGTERM) noexcept;

    // Called once, on the loop, when the child has exited (immediately posted if it already
    // has).
    void on_exit(ExitHandler handler);

private:
    friend Result<std::shared_ptr<ChildProcess>>
    spawn(boost::asio::io_context&, const std::vector<std::string>&, SpawnOptions);
    ChildProcess(boost::asio::io_context& io, pid_t pid, int pidfd);
    void watch();
    bool reap(bool block) noexcept;

    pid_t pid_;
    boost::asio::posix::stream_descriptor pidfd_;
    std::shared_ptr<Channel> channel_;
    bool running_ = true;
    int exit_code_ = -1;
    int term_signal_ = 0;
    ExitHandler on_exit_;
};

// Starts argv[0] (searched in PATH when it has no '/') with argv, a channel and options.
// The error is the child's execve() errno when it could not start.
Result<std::shared_ptr<ChildProcess>>
spawn(boost::asio::io_context& io, const std::vector<std::string>& argv, SpawnOptions options = {});

} // namespace bus
