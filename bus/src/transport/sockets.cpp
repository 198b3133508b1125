#include "transport/sockets.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace bus::detail {
namespace {

Result<sockaddr_un> unix_address(const std::string& path) {
    sockaddr_un addr{};
    if (path.size() >= sizeof addr.sun_path)
        return std::make_error_code(std::errc::filename_too_long);
    addr.sun_family = AF_UNIX;
    path.copy(addr.sun_path, sizeof addr.sun_path - 1);
    return addr;
}

} // namespace

Result<UniqueFd> listen_tcp(const std::string& address, bool reuseport) {
    if (!address.starts_with("tcp://"))
        return std::make_error_code(std::errc::invalid_argument);
    const std::string rest = address.substr(6);
    const auto colon = rest.rfind(':');
    if (colon == std::string::npos)
        return std::make_error_code(std::errc::invalid_argument);
    std::string host = rest.substr(0, colon);
    const std::string port = rest.substr(colon + 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* found = nullptr;
    if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0)
        return std::make_error_code(std::errc::address_not_available);
    std::error_code last = std::make_error_code(std::errc::address_not_available);
    for (auto* ai = found; ai; ai = ai->ai_next) {
        UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        const int one = 1;
        if (!fd || ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
            (reuseport && ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) ||
            ::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) < 0 || ::listen(fd.get(), 511) < 0) {
            last = last_error();
            continue;
        }
        ::freeaddrinfo(found);
        return fd;
    }
    ::freeaddrinfo(found);
    return last;
}

Result<UniqueFd> connect_unix(const std::string& path) {
    auto addr = unix_address(path);
    if (!addr)
        return addr.error();
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd)
        return last_error();
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr.value()), sizeof addr.value()) <
        0)
        return last_error();
    return fd;
}

std::error_code claim_socket_path(const std::string& path) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) < 0)
        return {};
    if (!S_ISSOCK(st.st_mode))
        return std::make_error_code(std::errc::file_exists);
    if (connect_unix(path))
        return std::make_error_code(std::errc::address_in_use);
    ::unlink(path.c_str());
    return {};
}

Result<UniqueFd> listen_unix(const std::string& path) {
    auto addr = unix_address(path);
    if (!addr)
        return addr.error();
    if (auto ec = claim_socket_path(path))
        return ec;
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd)
        return last_error();
    const mode_t old = ::umask(0177);
    const int bound =
        ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr.value()), sizeof addr.value());
    ::umask(old);
    if (bound < 0 || ::listen(fd.get(), SOMAXCONN) < 0)
        return last_error();
    return fd;
}

std::string address_text(const sockaddr_storage& address) {
    char host[INET6_ADDRSTRLEN] = "?";
    if (address.ss_family == AF_INET) {
        const auto& a = reinterpret_cast<const sockaddr_in&>(address);
        ::inet_ntop(AF_INET, &a.sin_addr, host, sizeof host);
        return std::string(host) + ":" + std::to_string(ntohs(a.sin_port));
    }
    if (address.ss_family == AF_INET6) {
        const auto& a = reinterpret_cast<const sockaddr_in6&>(address);
        ::inet_ntop(AF_INET6, &a.sin6_addr, host, sizeof host);
        return std::string("[") + host + "]:" + std::to_string(ntohs(a.sin6_port));
    }
    return "?";
}

std::string local_address_text(int fd) {
    sockaddr_storage address{};
    socklen_t len = sizeof address;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &len) < 0)
        return "?";
    return address_text(address);
}

} // namespace bus::detail
