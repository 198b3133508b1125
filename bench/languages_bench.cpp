// languages-bench: bus's clients in other languages beside the clients their users would
// otherwise pick, same machine, same run (issue 20).
//
//   node   the Node client of bus (clients/node) against busd over unix://, beside nats.js
//          (npm `nats`, pinned in bench/node/package-lock.json) against nats-server; both run by
//          bench/node/languages_peer.js, which forks its subscriber or responder
//
// Cases (--only picks by name): pubsub64.bus-node, pubsub64.nats-js (pub->sub, 64 B, one
// publisher and one subscriber process, the rate the subscriber sees from its first message to
// the last) and reqrep64.bus-node, reqrep64.nats-js (serial request/reply, 64 B, p50 and p99 of
// --count round trips after 500 of warm-up). Each round runs every case, alternating the peers;
// the table shows the median round. The bars are bus over NATS (rates; for latency NATS's p50
// over bus's), at least 1.0, aiming at 1.5.
//
//   languages-bench [--seconds S] [--rounds N] [--only NAME,...] [--count N] [--node PATH]
//                   [--busd PATH] [--keep]
#include "broker/harness.hpp"
#include "broker/session.hpp"
#include "common/options.hpp"
#include "common/process.hpp"
#include "common/report.hpp"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef BUS_BENCH_LANGUAGES_SCRIPT
#define BUS_BENCH_LANGUAGES_SCRIPT "bench/node/languages_peer.js"
#endif

namespace {

using bench::broker::Server;

struct Options : bench::Options {
    int count = 5000;
    std::string node = "node";
    bench::broker::ServerFlags server;
};

constexpr std::size_t payload = 64;
constexpr int warmup = 500;

// The peers under test, each with the address its script is given.
struct Brokers {
    std::string unix_endpoint; // busd
    int nats_port = 0;
};

nlohmann::json run_peer(const Options& o, const std::string& client, const Brokers& b,
                        const std::vector<std::string>& args) {
    std::vector<std::string> argv{o.node, BUS_BENCH_LANGUAGES_SCRIPT, client,
                                  client == "bus" ? b.unix_endpoint : std::to_string(b.nats_port)};
    argv.insert(argv.end(), args.begin(), args.end());
    bool exited_0 = false;
    const std::string output = bench::run_for_output(argv, exited_0);
    auto result = nlohmann::json::parse(output.substr(output.rfind('\n') + 1), nullptr, false);
    if (result.is_object() && result.contains("error"))
        throw std::runtime_error(client + ": " + result["error"].get<std::string>());
    if (!exited_0 || !result.is_object())
        throw std::runtime_error(client + " failed; it printed: " + output);
    return result;
}

} // namespace

int main(int argc, char** argv) {
    Options options;
    options.seconds = 2;
    bench::OptionParser parser("languages-bench", options);
    parser.add("--count", "N", [&](std::string_view v) {
        options.count = static_cast<int>(bench::to_integer(v, 1));
    });
    parser.add("--node", "PATH", [&](std::string_view v) { options.node = v; });
    options.server.add_to(parser);
    parser.parse(argc, argv);
    options.server.resolve();

    bench::broker::Session session(
        "languages-bench", static_cast<unsigned>(120 + options.rounds * 4 * (options.seconds + 30)),
        options.server.keep);
    const std::string nats_server = bench::broker::find_program("nats-server");
    if (nats_server.empty())
        throw std::runtime_error("nats-server is not installed (scripts/setup.sh --bench)");

    Brokers brokers;
    const std::string dir = session.base();
    brokers.unix_endpoint = "unix://" + dir + "/busd.sock";
    Server busd =
        Server::spawn({options.server.busd, "-e", brokers.unix_endpoint}, dir + "/busd.log");
    bench::broker::wait_for_unix(dir + "/busd.sock", 10, &busd);
    brokers.nats_port = bench::free_tcp_port();
    Server nats = Server::spawn({nats_server, "-a", "127.0.0.1", "-p",
                                 std::to_string(brokers.nats_port), "-n", "languages-bench"},
                                dir + "/nats.log");
    bench::broker::wait_for_tcp(brokers.nats_port, 10, &nats);

    std::map<std::string, bench::Samples> samples;
    const std::vector<std::pair<std::string, std::string>> peers{{"bus", "bus-node"},
                                                                 {"nats", "nats-js"}};
    for (int round = 0; round < options.rounds; ++round) {
        std::fprintf(stderr, "languages-bench: round %d of %d\n", round + 1, options.rounds);
        for (std::size_t i = 0; i < peers.size(); ++i) {
            // Alternating which peer goes first, so neither always runs on a warmer machine.
            const auto& [client, name] = peers[(i + static_cast<std::size_t>(round)) % 2];
            session.attempt(options, "pubsub64." + name, [&] {
                const auto r =
                    run_peer(options, client, brokers,
                             {"pubsub", std::to_string(payload), std::to_string(options.seconds)});
                const double seconds = r.at("seconds").get<double>();
                if (seconds <= 0)
                    throw std::runtime_error("no messages arrived");
                samples["pubsub64|" + name].values.push_back(r.at("messages").get<double>() /
                                                             seconds);
            });
            session.attempt(options, "reqrep64." + name, [&] {
                const auto r = run_peer(options, client, brokers,
                                        {"reqrep", std::to_string(payload),
                                         std::to_string(options.count), std::to_string(warmup)});
                samples["reqrep64_p50|" + name].values.push_back(r.at("p50_us").get<double>());
                samples["reqrep64_p99|" + name].values.push_back(r.at("p99_us").get<double>());
            });
        }
    }
    busd.stop();
    nats.stop();

    auto median = [&](const std::string& key) { return bench::median_of(samples, key); };
    std::printf("languages benchmark: the Node client of bus against busd (unix://) beside nats.js "
                "against nats-server,\nsame machine, same run; median of %d round(s).\n\n",
                options.rounds);
    bench::Table table({{"case", bench::Align::left},
                        {"bus-node"},
                        {"nats-js"},
                        {"bus/nats"},
                        {"spread bus"},
                        {"spread nats"}});
    auto cell = [](std::optional<double> v, int decimals) {
        return v ? (decimals ? bench::fixed(*v, decimals) : bench::thousands(*v)) : "-";
    };
    auto spread = [&](const std::string& key) {
        auto it = samples.find(key);
        return it == samples.end() ? std::string("-") : it->second.spread();
    };
    const auto bus_rate = median("pubsub64|bus-node"), nats_rate = median("pubsub64|nats-js");
    table.add_row({"pub->sub 64 B (msgs/s)", cell(bus_rate, 0), cell(nats_rate, 0),
                   bench::ratio_text(bus_rate, nats_rate), spread("pubsub64|bus-node"),
                   spread("pubsub64|nats-js")});
    for (const char* p : {"p50", "p99"}) {
        const std::string key = std::string("reqrep64_") + p;
        const auto b = median(key + "|bus-node"), n = median(key + "|nats-js");
        table.add_row({std::string("req/rep 64 B ") + p + " (us)", cell(b, 1), cell(n, 1),
                       bench::ratio_text(b, n), spread(key + "|bus-node"),
                       spread(key + "|nats-js")});
    }
    table.print(stdout);
    std::printf("\n");
    bench::print_ratio_bar(stdout, "languages.node.pubsub64.vs_nats", bus_rate, nats_rate, "1.0");
    // Latency: NATS's p50 over bus's, so that more is better here too.
    bench::print_ratio_bar(stdout, "languages.node.reqrep64_p50.vs_nats",
                           median("reqrep64_p50|nats-js"), median("reqrep64_p50|bus-node"), "1.0");
    return session.finish();
}
