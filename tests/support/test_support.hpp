// Helpers shared by the test executables: running a loop (or just waiting) until something
// happened, counting open descriptors, a TCP port held for the test, and raw socket writes for
// playing a broken peer.
#pragma once

#include <boost/asio/io_context.hpp>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace bus::test {

// Runs `io` until `done()` holds or `timeout` passes; returns done().
inline bool run_until(boost::asio::io_context& io, const std::function<bool()>& done,
                      std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done() && std::chrono::steady_clock::now() < deadline) {
        io.restart();
        io.run_for(std::chrono::milliseconds(5));
    }
    return done();
}

// Polls `done()` every millisecond until it holds or `timeout` passes; returns done(). For what
// another thread or process brings about, with no loop to run here.
inline bool wait_until(const std::function<bool()>& done,
                       std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
        if (std::chrono::steady_clock::now() >= deadline)
            return done();
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

inline std::size_t open_fd_count() {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd"))
        ++n;
    return n - 1; // the directory iterator's own descriptor
}

// A TCP port on 127.0.0.1 that nobody else gets while this object lives: the kernel's pick for
// port 0, kept bound (not listening) with SO_REUSEADDR and SO_REUSEPORT. A server that binds
// with either option (busd's listeners, ZeroMQ's tcp://, reuseport workers) can still take it;
// the kernel hands out neither as an ephemeral port nor to another bind without them. For
// servers that cannot bind port 0 and report what they got (busd's tcp:// endpoint, an app in
// reuseport mode).
class ReservedPort {
public:
    ReservedPort() : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
        const int one = 1;
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        if (fd_ < 0 || ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
            ::setsockopt(fd_, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
            ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
            ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
            const int error = errno;
            if (fd_ >= 0)
                ::close(fd_);
            throw std::system_error(error, std::system_category(), "reserving a TCP port");
        }
        port_ = ntohs(a.sin_port);
    }
    ~ReservedPort() { ::close(fd_); }
    ReservedPort(const ReservedPort&) = delete;
    ReservedPort& operator=(const ReservedPort&) = delete;

    int port() const { return port_; }
    std::string tcp() const { return "tcp://127.0.0.1:" + std::to_string(port_); }

private:
    int fd_;
    int port_ = 0;
};

// Writes `bytes` with `fds` attached (SCM_RIGHTS) in one sendmsg; returns sendmsg's result.
inline ssize_t send_with_fds(int socket, std::string_view bytes, const std::vector<int>& fds) {
    msghdr msg{};
    iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
    if (!fds.empty()) {
        msg.msg_control = control.data();
        msg.msg_controllen = control.size();
        cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        std::copy(fds.begin(), fds.end(), reinterpret_cast<int*>(CMSG_DATA(cmsg)));
    }
    return ::sendmsg(socket, &msg, MSG_NOSIGNAL);
}

// A u32 little-endian length prefix followed by `body`.
inline std::string raw_frame(std::string_view body) {
    const auto n = static_cast<std::uint32_t>(body.size());
    std::string out{static_cast<char>(n & 0xff), static_cast<char>((n >> 8) & 0xff),
                    static_cast<char>((n >> 16) & 0xff), static_cast<char>(n >> 24)};
    out += body;
    return out;
}

} // namespace bus::test
