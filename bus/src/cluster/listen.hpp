#pragma once

#include "bus/error.hpp"
#include "bus/unique_fd.hpp"

#include <string>

namespace bus::cluster::detail {

// A non-blocking, close-on-exec socket listening on tcp://HOST:PORT (HOST may be [v6]), with
// SO_REUSEADDR, and SO_REUSEPORT when `reuseport` (each worker of a reuseport app binds its own).
Result<UniqueFd> listen_tcp(const std::string& address, bool reuseport);

} // namespace bus::cluster::detail
