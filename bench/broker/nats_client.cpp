#include "nats_client.hpp"

#include "harness.hpp"

#include <cerrno>
#include <cmath>
#include <stdexcept>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace bench::broker {

NatsConnection::~NatsConnection() {
    if (fd_ >= 0)
        ::close(fd_);
}

void NatsConnection::connect(int port, const std::string& name) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd_ < 0)
        throw_errno("socket");
    const int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
        if (errno != EINPROGRESS)
            throw_errno("connect to nats-server");
        pollfd p{fd_, POLLOUT, 0};
        int err = 0;
        socklen_t len = sizeof err;
        if (::poll(&p, 1, 5000) != 1 || ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len) < 0 ||
            err != 0)
            throw std::runtime_error("cannot connect to nats-server");
    }
    // The server speaks first (INFO); ping_pong() reads past it.
    out_ += "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"name\":\"" + name +
            "\",\"lang\":\"cpp\",\"version\":\"0\",\"protocol\":0}\r\n";
    ping_pong(5);
}

void NatsConnection::pub(std::string_view subject, std::string_view reply,
                         std::string_view payload) {
    out_ += "PUB ";
    out_ += subject;
    out_ += ' ';
    if (!reply.empty()) {
        out_ += reply;
        out_ += ' ';
    }
    out_ += std::to_string(payload.size());
    out_ += "\r\n";
    out_ += payload;
    out_ += "\r\n";
}

void NatsConnection::sub(std::string_view subject, std::uint64_t sid) {
    out_ += "SUB ";
    out_ += subject;
    out_ += ' ';
    out_ += std::to_string(sid);
    out_ += "\r\n";
}

bool NatsConnection::flush(double deadline, double* blocked_s) {
    while (out_begin_ < out_.size()) {
        const ssize_t n =
            ::send(fd_, out_.data() + out_begin_, out_.size() - out_begin_, MSG_NOSIGNAL);
        if (n > 0) {
            out_begin_ += static_cast<std::size_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN)
            throw_errno("write to nats-server");
        const double t0 = now_s();
        if (t0 >= deadline)
            return false;
        pollfd p{fd_, POLLOUT, 0};
        ::poll(&p, 1, static_cast<int>(std::ceil((deadline - t0) * 1000)));
        if (blocked_s)
            *blocked_s += now_s() - t0;
    }
    out_.clear();
    out_begin_ = 0;
    return true;
}

void NatsConnection::ping_pong(double timeout_s) {
    const double deadline = now_s() + timeout_s;
    const std::uint64_t want = pongs_ + 1;
    ping();
    if (!flush(deadline))
        throw std::runtime_error("nats-server does not read");
    while (pongs_ < want) {
        if (!read_available([](const Msg&) {}))
            throw std::runtime_error("nats-server closed the connection");
        if (pongs_ >= want)
            break;
        const double left = deadline - now_s();
        if (left <= 0)
            throw std::runtime_error("no PONG from nats-server");
        pollfd p{fd_, POLLIN, 0};
        ::poll(&p, 1, static_cast<int>(std::ceil(left * 1000)));
        flush(deadline); // PONGs to the server's PINGs
    }
}

bool NatsConnection::fill() {
    if (in_begin_ == in_end_) {
        in_begin_ = in_end_ = 0;
    } else if (in_.size() - in_end_ < 64 * 1024) {
        std::memmove(in_.data(), in_.data() + in_begin_, in_end_ - in_begin_);
        in_end_ -= in_begin_;
        in_begin_ = 0;
        if (in_.size() - in_end_ < 64 * 1024)
            in_.resize(in_.size() * 2);
    }
    for (;;) {
        const ssize_t n = ::read(fd_, in_.data() + in_end_, in_.size() - in_end_);
        if (n > 0) {
            in_end_ += static_cast<std::size_t>(n);
            return true;
        }
        if (n == 0)
            return false;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            return true;
        if (errno == ECONNRESET)
            return false;
        throw_errno("read from nats-server");
    }
}

void NatsConnection::protocol_error(std::string_view line) {
    throw std::runtime_error("nats-server: " + std::string(line));
}

} // namespace bench::broker
