// bus bench pub|sub|req: load and measurement through bus::Client itself.
//
// A benchmark payload starts with the sender's CLOCK_MONOTONIC time (8 bytes, little-endian),
// which is the same clock in every process of the host: `bench sub` measures the latency of
// each message from it, `bench req` the round trip of each request.
#include "commands.hpp"
#include "connect.hpp"
#include "loop.hpp"

#include <bus/subject.hpp>

#include <boost/asio/steady_timer.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>

#include <time.h>

namespace bus::cli {
namespace {

struct BenchOptions {
    std::string what; // pub, sub, req
    std::string subject;
    std::uint64_t count = 100000;
    std::size_t size = 64;
    std::string timeout = "60s";
    bool serve = false;
};

std::int64_t monotonic_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

std::string stamped(std::size_t size) {
    std::string p(std::max<std::size_t>(size, 8), 'x');
    const std::int64_t now = monotonic_ns();
    for (int i = 0; i < 8; ++i)
        p[static_cast<std::size_t>(i)] = static_cast<char>((now >> (8 * i)) & 0xff);
    return p;
}

std::int64_t stamp_of(std::string_view payload) {
    if (payload.size() < 8)
        return 0;
    std::int64_t v = 0;
    for (int i = 7; i >= 0; --i)
        v = (v << 8) | static_cast<unsigned char>(payload[static_cast<std::size_t>(i)]);
    return v;
}

struct Report {
    std::string what;
    std::uint64_t count = 0;
    std::size_t size = 0;
    double seconds = 0;
    std::vector<std::int64_t> latencies_ns; // empty for pub
};

double percentile(const std::vector<std::int64_t>& sorted, double p) {
    if (sorted.empty())
        return 0;
    const auto i =
        static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
    return static_cast<double>(sorted[std::min(sorted.size() - 1, i == 0 ? 0 : i - 1)]);
}

void print_report(Report r, const Global& g) {
    std::sort(r.latencies_ns.begin(), r.latencies_ns.end());
    const double rate = r.seconds > 0 ? static_cast<double>(r.count) / r.seconds : 0;
    const double mib = rate * static_cast<double>(r.size) / (1 << 20);
    if (g.json) {
        nlohmann::ordered_json j;
        j["bench"] = r.what;
        j["count"] = r.count;
        j["size"] = r.size;
        j["seconds"] = r.seconds;
        j["msgs_per_s"] = rate;
        j["mib_per_s"] = mib;
        if (!r.latencies_ns.empty()) {
            nlohmann::ordered_json l;
            for (double p : {50.0, 90.0, 99.0, 99.9})
                l["p" + (p == 99.9 ? std::string("99.9") : std::to_string(static_cast<int>(p)))] =
                    percentile(r.latencies_ns, p) / 1000.0;
            l["max"] = static_cast<double>(r.latencies_ns.back()) / 1000.0;
            j["latency_us"] = l;
        }
        std::printf("%s\n", j.dump().c_str());
        return;
    }
    std::printf("%s: %llu messages of %zu bytes in %.3f s: %.0f msgs/s, %.1f MiB/s\n",
                r.what.c_str(), static_cast<unsigned long long>(r.count), r.size, r.seconds, rate,
                mib);
    if (!r.latencies_ns.empty())
        std::printf("latency (us): p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f\n",
                    percentile(r.latencies_ns, 50) / 1000, percentile(r.latencies_ns, 90) / 1000,
                    percentile(r.latencies_ns, 99) / 1000, percentile(r.latencies_ns, 99.9) / 1000,
                    static_cast<double>(r.latencies_ns.back()) / 1000);
}

int bench_pub(const BenchOptions& o, const Global& g) {
    boost::asio::io_context io;
    const auto signals = watch_signals(io);
    auto client = connect(io, g, "bench-pub");
    const auto start = std::chrono::steady_clock::now();
    std::uint64_t sent = 0;
    while (sent < o.count && !interrupted()) {
        const bool below_hwm = client->publish_bytes(o.subject, stamped(o.size));
        ++sent;
        if (!below_hwm || sent % 1000 == 0)
            if (auto ec = client->flush_wait(std::chrono::seconds(30)); ec && !interrupted())
                throw Failure(exit_code::unavailable, "the broker at " + g.endpoint +
                                                          " stopped answering: " + ec.message());
    }
    if (!interrupted())
        if (auto ec = client->flush_wait(std::chrono::seconds(30)))
            throw Failure(exit_code::unavailable,
                          "the broker at " + g.endpoint + " did not confirm: " + ec.message());
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    client->close();
    print_report({"pub", sent, std::max<std::size_t>(o.size, 8), seconds, {}}, g);
    return exit_code::ok;
}

int bench_sub(const BenchOptions& o, const Global& g) {
    const auto timeout = parse_duration(o.timeout, "--timeout");
    boost::asio::io_context io;
    const auto signals = watch_signals(io);
    auto client = connect(io, g, "bench-sub");
    Report r;
    r.what = "sub";
    r.latencies_ns.reserve(o.count);
    std::chrono::steady_clock::time_point first;
    std::uint64_t dropped = 0;
    client->on_event([&](const ClientEvent& e) {
        if (e.kind == ClientEvent::Kind::slow_consumer)
            dropped += e.dropped;
    });
    client->subscribe(o.subject, [&](Message& m) {
        if (r.count == 0)
            first = std::chrono::steady_clock::now();
        if (r.count >= o.count)
            return;
        ++r.count;
        r.size = m.payload().size();
        if (const auto stamp = stamp_of(m.payload()))
            r.latencies_ns.push_back(monotonic_ns() - stamp);
    });
    if (auto ec = client->flush_wait())
        throw Failure(exit_code::unavailable,
                      "the broker at " + g.endpoint + " did not confirm: " + ec.message());
    boost::asio::steady_timer timer(io);
    bool timed_out = false;
    timer.expires_after(timeout);
    timer.async_wait([&](const boost::system::error_code& ec) { timed_out = !ec; });
    run_until_done(io, [&] { return r.count >= o.count || timed_out; });
    timer.cancel();
    r.seconds =
        r.count ? std::chrono::duration<double>(std::chrono::steady_clock::now() - first).count()
                : 0;
    client->close();
    print_report(r, g);
    if (dropped)
        std::fprintf(stderr, "bus: the broker dropped %llu messages for us (slow consumer)\n",
                     static_cast<unsigned long long>(dropped));
    if (r.count < o.count && !interrupted())
        throw Failure(exit_code::timeout, "timeout: " + std::to_string(r.count) + " of " +
                                              std::to_string(o.count) + " messages in " +
                                              o.timeout);
    return exit_code::ok;
}

int bench_req(const BenchOptions& o, const Global& g) {
    const auto timeout = parse_duration(o.timeout, "--timeout");
    boost::asio::io_context io;
    const auto signals = watch_signals(io);
    auto client = connect(io, g, "bench-req");
    std::shared_ptr<Client> server;
    if (o.serve) {
        // An echoing instance in this process, on its own connection.
        server = connect(io, g, "bench-serve");
        server->serve(o.subject,
                      [](Message& m, Responder& responder) { responder.reply_bytes(m.payload()); });
        if (auto ec = server->flush_wait())
            throw Failure(exit_code::unavailable,
                          "cannot serve " + o.subject + ": " + ec.message());
    }
    Report r;
    r.what = "req";
    r.size = std::max<std::size_t>(o.size, 8);
    r.latencies_ns.reserve(o.count);
    const auto start = std::chrono::steady_clock::now();
    // One request at a time: the figure is the round trip.
    while (r.count < o.count && !interrupted()) {
        const auto sent = monotonic_ns();
        if (!call(io, *client, o.subject, stamped(o.size), timeout,
                  [&](std::error_code ec, const Message&) { return explain(ec, o.subject, g); }))
            break; // Ctrl-C: the report of what was done
        r.latencies_ns.push_back(monotonic_ns() - sent);
        ++r.count;
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    client->close();
    if (server)
        server->close();
    print_report(r, g);
    return exit_code::ok;
}

int run_bench(const BenchOptions& o, const Global& g) {
    if (o.what == "sub" ? !valid_pattern(o.subject) : !valid_subject(o.subject))
        throw Failure(exit_code::usage, "'" + o.subject + "' is not a valid " +
                                            (o.what == "sub" ? "pattern" : "subject"));
    if (o.count == 0)
        throw Failure(exit_code::usage, "--count must be at least 1");
    if (o.size > (4u << 20))
        throw Failure(exit_code::usage, "--size: at most 4 MiB");
    if (o.what == "pub")
        return bench_pub(o, g);
    if (o.what == "sub")
        return bench_sub(o, g);
    return bench_req(o, g);
}

} // namespace

void add_bench(CLI::App& app, Global& g, Runner& run) {
    auto o = std::make_shared<BenchOptions>();
    auto* cmd = app.add_subcommand("bench", "Load and measure: msgs/s and latency percentiles");
    cmd->add_option("what", o->what, "pub, sub or req")
        ->required()
        ->check(CLI::IsMember({"pub", "sub", "req"}));
    cmd->add_option("subject", o->subject, "the subject (pattern for sub; service for req)")
        ->required();
    cmd->add_option("-n,--count", o->count, "messages or requests (default 100000)");
    cmd->add_option("-s,--size", o->size, "payload bytes (default 64, at least 8)");
    cmd->add_option("-t,--timeout", o->timeout,
                    "sub: give up after this long; req: per request (default 60s)");
    cmd->add_flag("--serve", o->serve, "req: serve SUBJECT in this process too (an echo)");
    cmd->footer("\npub publishes as fast as busd takes them; sub prints the rate from its first "
                "message and\neach message's latency (the payload carries the send time); req "
                "sends one request at a\ntime and prints round-trip percentiles.\n\n"
                "Examples:\n"
                "  bus bench sub bench.x -n 100000 &  bus bench pub bench.x -n 100000\n"
                "  bus bench req --serve bench.echo -n 10000\n"
                "  bus bench req --json svc.name -n 1000 -s 512");
    cmd->callback([o, &g, &run] { run = [o, &g] { return run_bench(*o, g); }; });
}

} // namespace bus::cli
