#include "pubsub_case.hpp"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include <sys/stat.h>

namespace bench::broker {
Started::~Started() {
    try {
        peer.stop();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "stopping %s: %s\n", peer.name().c_str(), e.what());
    }
    if (!keep)
        remove_tree(dir);
}

std::string Runs::next_dir() {
    const std::string dir = base_ + "/run-" + std::to_string(++count_);
    if (::mkdir(dir.c_str(), 0700) < 0)
        throw_errno("mkdir " + dir);
    return dir;
}

PubSubOutcome run_pubsub(Peer& peer, Runs& runs, const PubSubSpec& spec, const PubSubHooks& hooks) {
    const std::string dir = runs.next_dir();
    peer.start(Pattern::pubsub, dir);
    Started started{peer, dir, spec.keep};
    if (hooks.started)
        hooks.started(dir);
    const int healthy = spec.healthy;
    const int total = healthy + spec.stalled;
    std::vector<Child> subs;
    for (int i = 0; i < total; ++i) {
        SubSpec sub{spec.size, i, total, i >= healthy};
        subs.push_back(
            fork_role(peer.name() + (sub.stalled ? " stalled" : " subscriber ") + std::to_string(i),
                      [&peer, sub](RoleIo& io) { peer.subscriber(sub, io); }));
    }
    for (auto& s : subs)
        s.read(20); // ready
    PubSubOutcome out;
    const pid_t broker = peer.broker_pid();
    if (broker)
        out.before = memory_of(broker);
    PubSpec pub_spec{spec.size, spec.seconds, spec.rate, total, spec.time_sends};
    Child pub = fork_role(peer.name() + " publisher",
                          [&peer, pub_spec](RoleIo& io) { peer.publisher(pub_spec, io); });
    out.pub = pub_result(pub.read(spec.seconds + 40));
    for (auto& s : subs)
        s.send("done " + std::to_string(out.pub.sent));
    double first = 0, last = 0;
    for (int i = 0; i < total; ++i) {
        const SubResult r = sub_result(subs[i].read(SubscriberCounter::cap + 10));
        if (i >= healthy)
            continue;
        out.healthy.push_back(r);
        if (r.malformed)
            throw std::runtime_error(peer.name() + ": " + std::to_string(r.malformed) +
                                     " malformed messages");
        if (r.count > out.pub.sent)
            throw std::runtime_error(peer.name() + ": more messages arrived than were sent");
        out.delivered += r.count;
        if (r.count) {
            first = first == 0 ? r.first : std::min(first, r.first);
            last = std::max(last, r.last);
        }
    }
    if (broker)
        out.after = memory_of(broker);
    if (hooks.finished)
        hooks.finished();
    for (auto& s : subs)
        s.wait(10);
    pub.send("close");
    pub.wait(20);
    const double pub_seconds = out.pub.end - out.pub.start;
    out.sent_rate = pub_seconds > 0 ? static_cast<double>(out.pub.sent) / pub_seconds : 0;
    out.delivered_rate = last > first ? static_cast<double>(out.delivered) / (last - first) : 0;
    const double expected = static_cast<double>(out.pub.sent) * healthy;
    out.loss = expected > 0 ? 1 - static_cast<double>(out.delivered) / expected : 1;
    return out;
}

} // namespace bench::broker
