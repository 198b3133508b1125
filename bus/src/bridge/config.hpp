// `[[bridge.nats]]` tables in busd's config file (docs/bridge.md), read and checked.
#pragma once

#include "bus/daemon.hpp"

#include <string>
#include <vector>

namespace bus::bridge {

// Every `[[bridge.nats]]` of the file at `path`; throws ConfigError naming the file and key.
std::vector<daemon::NatsBridgeConfig> load_nats_bridges(const std::string& path);

} // namespace bus::bridge
