// Listening and connecting sockets, one copy for every part of bus: busd's unix:// endpoint and
// cluster socket, a client's unix:// link, a cluster worker joining busd, and the cluster's TCP
// listeners (busd's own, and each worker's in reuseport mode), and the text of their addresses.
#pragma once

#include "bus/error.hpp"
#include "bus/unique_fd.hpp"

#include <string>

#include <sys/socket.h>

namespace bus::detail {

// A non-blocking, close-on-exec socket listening on tcp://HOST:PORT (HOST may be [v6]), with
// SO_REUSEADDR, and SO_REUSEPORT when `reuseport` (each worker of a reuseport app binds its own).
Result<UniqueFd> listen_tcp(const std::string& address, bool reuseport);

// Makes `path` free for a server's socket: a socket file there that answers belongs to a live
// server (std::errc::address_in_use); one that refuses is a dead server's and is removed;
// anything else there is std::errc::file_exists.
std::error_code claim_socket_path(const std::string& path);

// A non-blocking, close-on-exec Unix stream socket listening on `path` (claimed as above),
// mode 0600.
Result<UniqueFd> listen_unix(const std::string& path);

// A blocking, close-on-exec Unix stream socket connected to `path`.
Result<UniqueFd> connect_unix(const std::string& path);

// HOST:PORT for IPv4, [HOST]:PORT for IPv6, "?" for anything else: how the cluster names a
// connection's ends (NewConn's addresses) and its listeners.
std::string address_text(const sockaddr_storage& address);
// The address a socket is bound to, as above ("?" when the kernel will not say).
std::string local_address_text(int fd);

} // namespace bus::detail
