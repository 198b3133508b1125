// broker-bench: busd beside other brokers, in one run on one machine (issue 3).
//
// The peers (bench/broker/peer_*.cpp say exactly what each sends and how):
//   bus-ipc      the real busd (build-bench/bin/busd), clients are bus::Client over ipc://
//   bus-unix     the same busd, clients over unix://
//   zmq-direct   ZeroMQ with no broker: DEALER -> DEALER (PUB/SUB-style XPUB -> SUB to fan out)
//   zmq_proxy    a zmq_proxy in its own process: XSUB/XPUB for pub/sub, ROUTER/DEALER for
//                requests; a broker that routes nothing
//   nats         nats-server on 127.0.0.1, a small C++ client of the text protocol
//   dbus-broker  dbus-broker (via systemd-socket-activate + dbus-broker-launch), sd-bus clients
//   dbus-daemon  the reference dbus-daemon, sd-bus clients
//   unix-relay   request/reply only: a process that copies bytes between two Unix sockets from
//                an epoll loop, with blocking clients; the floor of any broker's round trip here
//   unix-relay-rearm  the same with an epoll_ctl(MOD) after every read, as Asio's reactor does
// Every server is started for one case and stopped after it, in a private temporary directory
// (unix sockets) or on 127.0.0.1; every process the bench starts is stopped when it ends, even
// when it fails or is killed (harness.hpp: the janitor).
//
// The cases, each in every round (default 3 rounds; the tables show the median):
//   pubsub64, pubsub1KiB  one publisher as fast as its transport lets it, one subscriber. The
//            subscriber's rate is what arrived from its first to its last message; "loss" is
//            what was sent and never arrived. When a run loses messages (bus drops for a
//            subscriber that does not keep up, by design), the same round paces the publisher
//            at 0.9, 0.72, 0.58, 0.46, 0.37 of what arrived until a run loses nothing:
//            "lossless" is what arrived in the first run that lost nothing, and what pub/sub
//            ratios compare (0 when none did).
//   fanout4, fanout16     the same with 4 / 16 subscribers, 64 B; rates are totals.
//   reqrep_serial, reqrep_64  request/reply round trips, 64 B, one at a time and 64 in flight.
//   stall    a publisher as fast as it can, a healthy subscriber, and a subscriber that
//            subscribes and never reads again: the healthy one's longest gap between messages,
//            the publisher's longest single send call, and the broker's RSS before vs its peak
//            (VmHWM) at the end. busd's memory bar compares what it grew by with what its
//            configuration lets it hold for the two subscribers (two per-client queue bounds):
//            memory that is flat grows by what is configured, not by what is sent.
//
// Ends with one `bar:` line per target. Exits 0 whether or not the bars are met; non-zero only
// when a case broke.
//
//   broker-bench [--seconds S] [--stall-seconds S] [--rounds R] [--only NAME[,NAME...]]
//                [--search-steps N] [--busd PATH] [--keep]
// --only keeps the cases whose name (CASE.PEER, e.g. pubsub64.bus-unix, reqrep_64.nats,
// stall.bus-ipc) contains one of the NAMEs.
#include "broker/harness.hpp"
#include "broker/peers.hpp"
#include "broker/pubsub_case.hpp"
#include "broker/session.hpp"
#include "common/options.hpp"
#include "common/process.hpp"
#include "common/report.hpp"

#include <bus/broker.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#ifndef BUS_BENCH_BUSD
#define BUS_BENCH_BUSD ""
#endif

namespace {

using namespace bench::broker;

// --seconds, --rounds and --only, and broker-bench's own.
struct Options : bench::Options {
    double stall_seconds = 2.0;
    int search_steps = 5;
    bench::broker::ServerFlags server{BUS_BENCH_BUSD};
};

// --- samples ----------------------------------------------------------------------------------

// By "CASE|PEER|METRIC".
std::map<std::string, bench::Samples> results;

void record(const std::string& key, double value) {
    results[key].values.push_back(value);
}

std::optional<double> median_of(const std::string& key) {
    return bench::median_of(results, key);
}

std::string spread_of(const std::string& key) {
    const auto it = results.find(key);
    return it == results.end() ? "-" : it->second.spread();
}

std::string key(const std::string& c, const std::string& peer, const std::string& metric) {
    return c + "|" + peer + "|" + metric;
}

// --- running a case ---------------------------------------------------------------------------

// A pub/sub run (pubsub_case.hpp) with broker-bench's --keep.
PubSubOutcome run_pubsub(Peer& peer, Runs& runs, const Options& options, std::size_t size,
                         int healthy, int stalled, double seconds, double rate, bool time_sends) {
    return bench::broker::run_pubsub(
        peer, runs, {size, healthy, stalled, seconds, rate, time_sends, options.server.keep});
}

ReqResult run_reqrep(Peer& peer, Runs& runs, const Options& options, int in_flight) {
    const std::string dir = runs.next_dir();
    peer.start(Pattern::reqrep, dir);
    Started started{peer, dir, options.server.keep};
    Child responder =
        fork_role(peer.name() + " responder", [&peer](RoleIo& io) { peer.responder(io); });
    responder.read(20);
    ReqSpec spec;
    spec.seconds = options.seconds;
    spec.in_flight = in_flight;
    Child requester = fork_role(peer.name() + " requester",
                                [&peer, spec](RoleIo& io) { peer.requester(spec, io); });
    const ReqResult r = req_result(requester.read(spec.warmup + spec.seconds + 30));
    requester.wait(10);
    responder.stop(1);
    if (r.count == 0 || r.seconds <= 0)
        throw std::runtime_error(peer.name() + ": no round trip completed");
    return r;
}

// --- the cases --------------------------------------------------------------------------------

struct PubSubCase {
    std::string name;
    std::size_t size;
    int subscribers;
};

const std::vector<PubSubCase> pubsub_cases{
    {"pubsub64", 64, 1},
    {"pubsub1KiB", 1024, 1},
    {"fanout4", 64, 4},
    {"fanout16", 64, 16},
};

struct ReqCase {
    std::string name;
    int in_flight;
};
const std::vector<ReqCase> req_cases{{"reqrep_serial", 1}, {"reqrep_64", 64}};

std::string rate_text(double v) {
    return v >= 1e6 ? bench::fixed(v / 1e6, 2) + "M" : bench::fixed(v / 1e3, 1) + "k";
}

void pubsub_round(Peer& peer, Runs& runs, const Options& options, const PubSubCase& c) {
    const std::string name = c.name + "." + peer.name();
    auto out = run_pubsub(peer, runs, options, c.size, c.subscribers, 0, options.seconds, 0, false);
    record(key(c.name, peer.name(), "sent"), out.sent_rate);
    record(key(c.name, peer.name(), "delivered"), out.delivered_rate);
    record(key(c.name, peer.name(), "loss"), out.loss);
    std::fprintf(stderr, "  %-24s sent %8s/s  delivered %8s/s  loss %6.3f%%", name.c_str(),
                 rate_text(out.sent_rate).c_str(), rate_text(out.delivered_rate).c_str(),
                 100 * out.loss);
    const auto cut = std::count_if(out.healthy.begin(), out.healthy.end(),
                                   [](const SubResult& r) { return r.disconnected; });
    if (cut)
        std::fprintf(stderr, " (%d cut off by the broker)", static_cast<int>(cut));
    std::optional<double> lossless;
    if (out.loss == 0) {
        lossless = out.delivered_rate;
    } else {
        // Paced below what the subscribers managed, in steps, until nothing is lost.
        double per_sub = out.delivered_rate / c.subscribers;
        for (int step = 0; step < options.search_steps && !lossless; ++step) {
            per_sub *= step == 0 ? 0.9 : 0.8;
            auto paced = run_pubsub(peer, runs, options, c.size, c.subscribers, 0, options.seconds,
                                    per_sub, false);
            std::fprintf(stderr, " | paced %s/s: loss %.3f%%", rate_text(per_sub).c_str(),
                         100 * paced.loss);
            if (paced.loss == 0)
                lossless = paced.delivered_rate;
        }
    }
    // 0: nothing tried was lossless.
    record(key(c.name, peer.name(), "lossless"), lossless.value_or(0));
    std::fprintf(stderr, "\n");
}

void reqrep_round(Peer& peer, Runs& runs, const Options& options, const ReqCase& c) {
    const std::string name = c.name + "." + peer.name();
    const ReqResult r = run_reqrep(peer, runs, options, c.in_flight);
    const double rate = static_cast<double>(r.count) / r.seconds;
    record(key(c.name, peer.name(), "rate"), rate);
    record(key(c.name, peer.name(), "p50"), r.p50_us);
    record(key(c.name, peer.name(), "p99"), r.p99_us);
    std::fprintf(stderr, "  %-24s %8s/s  p50 %6.1f us  p99 %7.1f us\n", name.c_str(),
                 rate_text(rate).c_str(), r.p50_us, r.p99_us);
}

void stall_round(Peer& peer, Runs& runs, const Options& options) {
    const std::string name = "stall." + peer.name();
    auto out = run_pubsub(peer, runs, options, 64, 1, 1, options.stall_seconds, 0, true);
    const SubResult& h = out.healthy.at(0);
    // The longest time the healthy subscriber heard nothing while the publisher was sending,
    // counting from the first send and up to the last.
    double gap = h.count ? std::max(h.max_gap_ms, (h.first - out.pub.start) * 1000)
                         : (out.pub.end - out.pub.start) * 1000;
    const bool to_the_end =
        h.count && out.pub.end - h.last > 0 && (out.pub.end - h.last) * 1000 > gap;
    if (to_the_end)
        gap = (out.pub.end - h.last) * 1000;
    record(key("stall", peer.name(), "gap"), gap);
    record(key("stall", peer.name(), "gap_to_end"), to_the_end ? 1 : 0);
    record(key("stall", peer.name(), "delivered"), out.delivered_rate);
    record(key("stall", peer.name(), "sent"), out.sent_rate);
    record(key("stall", peer.name(), "send_ms"), out.pub.max_send_ms);
    record(key("stall", peer.name(), "blocked_ms"), out.pub.max_blocked_ms);
    record(key("stall", peer.name(), "cut"), h.disconnected ? 1 : 0);
    record(key("stall", peer.name(), "wait_ms"), out.pub.max_wait_ms);
    record(key("stall", peer.name(), "rss_before"), out.before.rss_mb);
    record(key("stall", peer.name(), "rss_peak"), out.after.hwm_mb);
    const double growth = out.before.rss_mb > 0 ? out.after.hwm_mb / out.before.rss_mb : 0;
    record(key("stall", peer.name(), "growth"), growth);
    record(key("stall", peer.name(), "grown_mb"), out.after.hwm_mb - out.before.rss_mb);
    std::fprintf(stderr,
                 "  %-24s healthy gap %7.1f ms%s%s  got %8s/s  send %7.2f ms (blocked %7.2f ms)"
                 "  wait %7.1f ms  rss %.1f -> %.1f MB\n",
                 name.c_str(), gap, to_the_end ? " (to the end)" : "",
                 h.disconnected ? " (cut off)" : "", rate_text(out.delivered_rate).c_str(),
                 out.pub.max_send_ms, out.pub.max_blocked_ms, out.pub.max_wait_ms,
                 out.before.rss_mb, out.after.hwm_mb);
}

// --- the report -------------------------------------------------------------------------------

const std::vector<std::string> all_peers{"bus-unix",    "bus-ipc",    "zmq-direct",
                                         "zmq_proxy",   "nats",       "dbus-broker",
                                         "dbus-daemon", "unix-relay", "unix-relay-rearm"};
const std::vector<std::string> stall_peers{"bus-unix", "bus-ipc", "nats", "zmq_proxy",
                                           "dbus-broker"};

// The rate a pub/sub case is compared by: per round, what arrived when nothing was lost, else
// the highest paced rate that lost nothing (0 if none of those tried did).
std::optional<double> effective(const std::string& c, const std::string& peer) {
    return median_of(key(c, peer, "lossless"));
}

std::string opt_thousands(std::optional<double> v) {
    return v ? bench::thousands(*v) : "-";
}

void print_report(const Options& options) {
    std::printf(
        "broker benchmark: busd (ipc:// and unix://) beside a direct ZeroMQ link, a zmq_proxy "
        "hop,\nnats-server, dbus-broker, dbus-daemon and unix-relay (request/reply's floor); all "
        "local,\n%.1f s per case, stall "
        "%.1f s;\neach figure is the median of %d rounds (spread = (max - min) / median of the "
        "compared figure).\nRatios are bus-unix/peer and bus-ipc/peer.\n\n",
        options.seconds, options.stall_seconds, options.rounds);

    for (const auto& c : pubsub_cases) {
        bool any = false;
        for (const auto& p : all_peers)
            any = any || median_of(key(c.name, p, "sent"));
        if (!any)
            continue;
        if (c.subscribers == 1)
            std::printf("%s. pub -> sub, %zu B, one publisher, one subscriber (msgs/s)\n",
                        c.name.c_str(), c.size);
        else
            std::printf("%s. pub -> %d subscribers, %zu B (delivered = total over the "
                        "subscribers, msgs/s)\n",
                        c.name.c_str(), c.subscribers, c.size);
        bench::Table table({{"peer", bench::Align::left},
                            {"sent/s"},
                            {"delivered/s"},
                            {"loss"},
                            {"lossless/s"},
                            {"MB/s"},
                            {"spread"},
                            {"unix/peer"},
                            {"ipc/peer"}});
        const auto unix = effective(c.name, "bus-unix"), ipc = effective(c.name, "bus-ipc");
        for (const auto& p : all_peers) {
            const auto sent = median_of(key(c.name, p, "sent"));
            if (!sent)
                continue;
            const auto delivered = median_of(key(c.name, p, "delivered"));
            const auto loss = median_of(key(c.name, p, "loss"));
            const auto eff = effective(c.name, p);
            table.add_row({p, bench::thousands(*sent), opt_thousands(delivered),
                           bench::fixed(100 * *loss, 2) + "%", opt_thousands(eff),
                           eff ? bench::fixed(*eff * static_cast<double>(c.size) / 1e6, 1) : "-",
                           spread_of(key(c.name, p, "lossless")), bench::ratio_text(unix, eff),
                           bench::ratio_text(ipc, eff)});
        }
        table.print(stdout);
        std::printf("\n");
    }

    for (const auto& c : req_cases) {
        bool any = false;
        for (const auto& p : all_peers)
            any = any || median_of(key(c.name, p, "rate"));
        if (!any)
            continue;
        std::printf("%s. request/reply, 64 B, %s (round trips/s)\n", c.name.c_str(),
                    c.in_flight == 1 ? "one at a time"
                                     : (std::to_string(c.in_flight) + " in flight").c_str());
        bench::Table table({{"peer", bench::Align::left},
                            {"round trips/s"},
                            {"p50 us"},
                            {"p99 us"},
                            {"spread"},
                            {"unix/peer"},
                            {"ipc/peer"}});
        const auto unix = median_of(key(c.name, "bus-unix", "rate"));
        const auto ipc = median_of(key(c.name, "bus-ipc", "rate"));
        for (const auto& p : all_peers) {
            const auto rate = median_of(key(c.name, p, "rate"));
            if (!rate)
                continue;
            table.add_row({p, bench::thousands(*rate),
                           bench::fixed(*median_of(key(c.name, p, "p50")), 1),
                           bench::fixed(*median_of(key(c.name, p, "p99")), 1),
                           spread_of(key(c.name, p, "rate")), bench::ratio_text(unix, rate),
                           bench::ratio_text(ipc, rate)});
        }
        table.print(stdout);
        std::printf("\n");
    }

    bool any_stall = false;
    for (const auto& p : stall_peers)
        any_stall = any_stall || median_of(key("stall", p, "gap"));
    if (any_stall) {
        std::printf(
            "stall. a publisher as fast as it can, 64 B, a healthy subscriber and one that never "
            "reads\n"
            "  gap      the healthy subscriber's longest silence while the publisher sent ('+': "
            "it lasted\n           to the end, so the real gap is longer; 'cut': the broker "
            "disconnected it)\n"
            "  send     the publisher's longest single send call, preemption included\n"
            "  blocked  the longest send call during which the publisher slept (the transport "
            "made it wait)\n"
            "  wait     the longest the transport held the publisher up (bus: waiting for its "
            "flush() window)\n"
            "  RSS      the broker's before the publisher started, and its peak (VmHWM) at the "
            "end (MiB)\n"
            "  growth   peak / RSS before\n"
            "  grown    peak - RSS before, MiB\n");
        bench::Table table({{"peer", bench::Align::left},
                            {"gap ms"},
                            {"spread"},
                            {"healthy got/s"},
                            {"sent/s"},
                            {"send ms"},
                            {"blocked ms"},
                            {"wait ms"},
                            {"RSS MB"},
                            {"peak MB"},
                            {"growth"},
                            {"grown"}});
        for (const auto& p : stall_peers) {
            const auto gap = median_of(key("stall", p, "gap"));
            if (!gap)
                continue;
            const bool to_end = *median_of(key("stall", p, "gap_to_end")) >= 0.5;
            const bool cut = *median_of(key("stall", p, "cut")) >= 0.5;
            table.add_row({p, bench::fixed(*gap, 1) + (to_end ? "+" : "") + (cut ? " cut" : ""),
                           spread_of(key("stall", p, "gap")),
                           bench::thousands(*median_of(key("stall", p, "delivered"))),
                           bench::thousands(*median_of(key("stall", p, "sent"))),
                           bench::fixed(*median_of(key("stall", p, "send_ms")), 2),
                           bench::fixed(*median_of(key("stall", p, "blocked_ms")), 2),
                           bench::fixed(*median_of(key("stall", p, "wait_ms")), 1),
                           bench::fixed(*median_of(key("stall", p, "rss_before")), 1),
                           bench::fixed(*median_of(key("stall", p, "rss_peak")), 1),
                           bench::fixed(*median_of(key("stall", p, "growth")), 2),
                           bench::fixed(*median_of(key("stall", p, "grown_mb")), 1)});
        }
        table.print(stdout);
        std::printf("\n");
    }

    // A bar prints only when both of its measurements ran.
    auto bar = [](const std::string& name, std::optional<double> a, std::optional<double> b,
                  const std::string& target) {
        bench::print_ratio_bar(stdout, name, a, b, target);
    };
    bar("broker.pubsub64.unix.vs_nats", effective("pubsub64", "bus-unix"),
        effective("pubsub64", "nats"), "1.0");
    bar("broker.pubsub64.ipc.vs_zmq_proxy", effective("pubsub64", "bus-ipc"),
        effective("pubsub64", "zmq_proxy"), "1.0");
    bar("broker.fanout4.vs_nats", effective("fanout4", "bus-unix"), effective("fanout4", "nats"),
        "1.0");
    // Issue 3 asked for 2x dbus-broker; the unix-relay floor (a broker that does nothing) is
    // itself only 1.4-1.6x dbus-broker here, so that bar cannot be met by any broker. The bars
    // are: beat dbus-broker, and stay within 0.8 of the floor (docs/decisions.md).
    bar("broker.reqrep_serial.unix.vs_dbus_broker",
        median_of(key("reqrep_serial", "bus-unix", "rate")),
        median_of(key("reqrep_serial", "dbus-broker", "rate")), "1.0");
    bar("broker.reqrep_serial.unix.vs_floor", median_of(key("reqrep_serial", "bus-unix", "rate")),
        median_of(key("reqrep_serial", "unix-relay", "rate")), "0.8");
    if (const auto floor = median_of(key("reqrep_serial", "unix-relay", "rate")),
        dbus = median_of(key("reqrep_serial", "dbus-broker", "rate"));
        floor && dbus && *dbus > 0)
        std::printf("note: reqrep_serial floor (unix-relay) / dbus-broker = %.2f: the most any "
                    "broker could reach against the issue's 2.0\n",
                    *floor / *dbus);
    bar("broker.reqrep_64.unix.vs_nats", median_of(key("reqrep_64", "bus-unix", "rate")),
        median_of(key("reqrep_64", "nats", "rate")), "1.0");
    // The stall bars take the worse of bus's two transports.
    auto worst = [](const std::string& metric) -> std::optional<double> {
        std::optional<double> w;
        for (const char* p : {"bus-unix", "bus-ipc"})
            if (const auto v = median_of(key("stall", p, metric)))
                w = w ? std::max(*w, *v) : *v;
        return w;
    };
    if (const auto gap = worst("gap"))
        bench::print_bar(stdout, {"broker.stall.healthy_gap_ms", *gap, "100", true});
    if (const auto blocked = worst("blocked_ms"))
        // Target 0: no send blocks. A send that returns within 1 ms does not count as blocked.
        std::printf("bar: broker.stall.publisher_blocked_ms measured=%s target=0 %s\n",
                    bench::fixed(*blocked, 2).c_str(), *blocked <= 1.0 ? "ok" : "short");
    // What busd may hold for the stall's two subscribers: a full queue each (bus/broker.hpp,
    // the default busd runs with here). Growth up to half again that is the allocator, the code
    // and buffers the burst touched first; more is memory that grows with what was sent.
    const double queues_mb =
        2.0 * static_cast<double>(bus::broker::Limits{}.client_queue_bytes) / (1024.0 * 1024.0);
    if (const auto grown = worst("grown_mb"))
        bench::print_bar(
            stdout, {"broker.stall.rss_growth_vs_queue_bounds", *grown / queues_mb, "1.5", true});
}

} // namespace

int main(int argc, char** argv) {
    Options options;
    bench::OptionParser parser("broker-bench", options);
    parser.add("--stall-seconds", "S",
               [&](std::string_view v) { options.stall_seconds = bench::to_double(v); });
    parser.add("--search-steps", "N", [&](std::string_view v) {
        options.search_steps = static_cast<int>(bench::to_integer(v, 0));
    });
    options.server.add_to(parser);
    parser.parse(argc, argv);
    options.server.resolve();

    // Orphans of the servers (dbus-broker once its launcher is gone) come back to the session.
    Session session("broker-bench",
                    static_cast<unsigned>(600 + options.rounds * 60 *
                                                    (options.seconds + options.stall_seconds)),
                    options.server.keep);

    Paths paths;
    paths.busd = options.server.busd;
    paths.nats_server = find_program("nats-server");
    paths.dbus_daemon = find_program("dbus-daemon");
    paths.dbus_launch = find_program("dbus-broker-launch");
    paths.socket_activate = find_program("systemd-socket-activate");

    std::vector<std::unique_ptr<Peer>> peers;
    auto add = [&](std::unique_ptr<Peer> peer, const std::vector<std::string>& needs) {
        for (const auto& n : needs)
            if (n.empty() || ::access(n.c_str(), X_OK) != 0) {
                std::fprintf(stderr,
                             "broker-bench: %s is not installed (scripts/setup.sh --bench), "
                             "skipping %s\n",
                             n.empty() ? "a program" : n.c_str(), peer->name().c_str());
                session.broke();
                return;
            }
        peers.push_back(std::move(peer));
    };
    add(make_bus_peer(paths, "unix"), {paths.busd});
    add(make_bus_peer(paths, "ipc"), {paths.busd});
    add(make_zmq_direct_peer(), {});
    add(make_zmq_proxy_peer(), {});
    add(make_nats_peer(paths), {paths.nats_server});
    add(make_dbus_peer(paths, "dbus-broker"), {paths.dbus_launch, paths.socket_activate});
    add(make_dbus_peer(paths, "dbus-daemon"), {paths.dbus_daemon});
    add(make_relay_peer(false), {});
    add(make_relay_peer(true), {});

    Runs runs(session.base());
    const double t0 = now_s();

    auto attempt = [&](const std::string& name, const std::function<void()>& body) {
        session.attempt(options, name, body);
    };
    for (int round = 1; round <= options.rounds; ++round) {
        std::fprintf(stderr, "broker-bench: round %d of %d\n", round, options.rounds);
        for (const auto& c : pubsub_cases)
            for (auto& peer : peers)
                if (peer->serves(Pattern::pubsub))
                    attempt(c.name + "." + peer->name(),
                            [&] { pubsub_round(*peer, runs, options, c); });
        for (const auto& c : req_cases)
            for (auto& peer : peers)
                attempt(c.name + "." + peer->name(),
                        [&] { reqrep_round(*peer, runs, options, c); });
        for (auto& peer : peers)
            if (std::find(stall_peers.begin(), stall_peers.end(), peer->name()) !=
                stall_peers.end())
                attempt("stall." + peer->name(), [&] { stall_round(*peer, runs, options); });
    }
    std::fprintf(stderr, "broker-bench: %.0f s\n", now_s() - t0);

    print_report(options);
    return session.finish();
}
