// What a bus::cluster::Worker keeps while a Node.js cluster primary runs it (worker_node.cpp).
#pragma once

#include "bus/cluster.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <set>
#include <string>

namespace bus::cluster {

struct Worker::NodePrimary {
    // Node's sendHelper numbers every message; the primary answers a request by its number.
    std::uint64_t next_seq = 0;
    // queryServer messages awaiting the primary's answer, by seq: the address as BUS_LISTEN
    // gave it, and the message, sent again as `listening` once the answer came.
    struct Query {
        std::string address;
        nlohmann::json message;
    };
    std::map<std::uint64_t, Query> queries;
    // The primary's keys of the servers it hands this worker connections for.
    std::set<std::string> keys;

    // As Node's sendHelper: marked internal (cmd NODE_CLUSTER) and numbered; returns the seq.
    std::uint64_t send(Channel& channel, nlohmann::json message) {
        const std::uint64_t seq = next_seq++;
        message["cmd"] = "NODE_CLUSTER";
        message["seq"] = seq;
        channel.send_bytes(message.dump());
        return seq;
    }
};

} // namespace bus::cluster
