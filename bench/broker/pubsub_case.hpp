// One pub/sub run against a peer, as broker-bench and http-bench measure it: the peer's server
// started in a fresh directory, the subscribers forked and ready, then the publisher; the
// subscribers' rate from the first message that arrived to the last, and what was lost. The
// server is stopped and its directory removed however the run ends.
#pragma once

#include "harness.hpp"
#include "peers.hpp"

#include <functional>
#include <string>
#include <vector>

namespace bench::broker {

// A fresh directory per server, below `base`.
class Runs {
public:
    explicit Runs(std::string base) : base_(std::move(base)) {}
    std::string next_dir();

private:
    std::string base_;
    int count_ = 0;
};

// Stops the peer's server and removes its directory (unless `keep`) however a run ends.
struct Started {
    Peer& peer;
    std::string dir;
    bool keep;
    ~Started();
};

struct PubSubSpec {
    std::size_t size = 64;
    int healthy = 1, stalled = 0;
    double seconds = 1;
    double rate = 0;         // the publisher's pace, msgs/s; 0: as fast as it can
    bool time_sends = false; // the stall case
    bool keep = false;       // leave the server's directory (--keep)
};

// What a run may do beside the roles (http-bench: load busd's HTTP face).
struct PubSubHooks {
    // The server is up (its directory); no role has started yet.
    std::function<void(const std::string& dir)> started;
    // The publisher and the subscribers have reported; the server still runs.
    std::function<void()> finished;
};

struct PubSubOutcome {
    PubResult pub;
    std::vector<SubResult> healthy;
    std::uint64_t delivered = 0;
    double sent_rate = 0, delivered_rate = 0, loss = 0;
    Memory before, after;
};

PubSubOutcome run_pubsub(Peer& peer, Runs& runs, const PubSubSpec& spec,
                         const PubSubHooks& hooks = {});

} // namespace bench::broker
