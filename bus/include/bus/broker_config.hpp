// busd's configuration file (TOML). Every key is optional; unknown keys and values out of range
// are refused with a message that names the key, because a typo that silently falls back to a
// default is worse than a refusal to start.
//
//   [broker]
//   endpoints = ["ipc:///run/user/1000/bus/busd.zmq", "unix:///run/user/1000/bus/busd.sock"]
//   heartbeat_ms = 1000
//
//   [limits]
//   max_message_size = 8388608      # bytes
//   client_queue_messages = 2000    # per ZeroMQ client, in batches (see client_queue_bytes)
//   client_queue_bytes = 2097152    # per client (ZeroMQ: as many 16 KiB batches)
//   max_subscriptions = 10000       # per client
//   max_services = 1000             # per client
//   max_tracked_subjects = 1000     # subjects (and services) with statistics of their own;
//                                   # the rest are counted together as "(other)"
//
//   [access]
//   allow_uids = [1001]             # besides busd's own uid
//   allow_gids = [100]
//   monitor_uids = [1001]           # may `bus monitor` (busd's own uid always may)
//
//   [[access.rules]]                # clients of uid 1001 are confined to these subjects
//   uid = 1001                      # (or gid = ...)
//   publish = ["orders.>"]          # publish and request
//   subscribe = ["orders.>", "$sys.client.>"]   # subscribe and serve
//
//   [[app]]                         # cluster workers: bus/cluster_supervisor.hpp, docs/cluster.md
//   name = "web"
//   command = "/usr/local/bin/bus-http-hello"
#pragma once

#include "bus/broker.hpp"
#include "bus/config_error.hpp"

#include <string>

namespace bus::broker {

// Throws bus::ConfigError ("FILE: key 'limits.max_message_size': must be between ...").
Options load_config(const std::string& path);

} // namespace bus::broker
