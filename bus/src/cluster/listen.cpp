// Listening TCP sockets for the cluster: busd's own (round_robin, least_connections, shared)
// and each worker's in reuseport mode.
#include "listen.hpp"

#include <netdb.h>
#include <sys/socket.h>

namespace bus::cluster::detail {

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

} // namespace bus::cluster::detail
