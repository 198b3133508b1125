// bench/run cluster (issue 6): HTTP "hello" with 2 workers under wrk on 127.0.0.1, side by side:
//
// - requests/s and latency p50/p99, with a new connection per request (Connection: close) and
//   with keep-alive, for busd round_robin with bus-http-hello, the same worker in reuseport
//   mode (no master in the path), Node's cluster module (round-robin) and one Node process;
// - reload under load: wrk runs while busd reloads the app 5 times ($sys.cluster.reload);
// - worker death under load: one worker SIGKILLed every second for 10 s.
//
// Errors are wrk's socket errors (connect, read, write, timeout) and non-2xx responses; a
// connection that busd accepted and nobody answered would show as a timeout.
#include "common/options.hpp"
#include "common/process.hpp"
#include "common/report.hpp"

#include <bus/child_process.hpp>
#include <bus/client.hpp>
#include <bus/v1/cluster.pb.h>

#include <boost/asio/io_context.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
namespace asio = boost::asio;

// --seconds (wrk's -d, whole seconds) and --rounds, and cluster-bench's own. No --only: every
// server runs at once, and the bars compare them.
struct Options : bench::Options {
    Options() { seconds = 3; }
    int connections = 50;
    int threads = 2;
};

struct WrkResult {
    bool ran = false;
    double requests_per_s = 0;
    double p50_ms = 0, p99_ms = 0;
    long requests = 0;
    long connect_errors = 0, read_errors = 0, write_errors = 0, timeouts = 0;
    long non_2xx = 0;
    long errors() const { return connect_errors + read_errors + write_errors + timeouts + non_2xx; }
};

double to_ms(double value, const std::string& unit) {
    if (unit == "us")
        return value / 1000;
    if (unit == "s")
        return value * 1000;
    if (unit == "m")
        return value * 60000;
    return value;
}

WrkResult run_wrk(int port, bool keep_alive, int seconds, const Options& o) {
    std::string command = "wrk --latency --timeout 2s -t" + std::to_string(o.threads) + " -c" +
                          std::to_string(o.connections) + " -d" + std::to_string(seconds) + "s ";
    if (!keep_alive)
        command += "-H 'Connection: close' ";
    command += "http://127.0.0.1:" + std::to_string(port) + "/ 2>&1";
    WrkResult r;
    FILE* p = ::popen(command.c_str(), "r");
    if (!p)
        return r;
    std::string out;
    char buf[4096];
    while (std::size_t n = std::fread(buf, 1, sizeof buf, p))
        out.append(buf, n);
    r.ran = ::pclose(p) == 0;
    std::smatch m;
    if (std::regex_search(out, m, std::regex(R"(Requests/sec:\s+([0-9.]+))")))
        r.requests_per_s = std::stod(m[1]);
    if (std::regex_search(out, m, std::regex(R"(\n\s+50%\s+([0-9.]+)(us|ms|s|m))")))
        r.p50_ms = to_ms(std::stod(m[1]), m[2]);
    if (std::regex_search(out, m, std::regex(R"(\n\s+99%\s+([0-9.]+)(us|ms|s|m))")))
        r.p99_ms = to_ms(std::stod(m[1]), m[2]);
    if (std::regex_search(out, m, std::regex(R"((\d+) requests in)")))
        r.requests = std::stol(m[1]);
    if (std::regex_search(out, m,
                          std::regex(R"(Socket errors: connect (\d+), read (\d+), write (\d+), )"
                                     R"(timeout (\d+))"))) {
        r.connect_errors = std::stol(m[1]);
        r.read_errors = std::stol(m[2]);
        r.write_errors = std::stol(m[3]);
        r.timeouts = std::stol(m[4]);
    }
    if (std::regex_search(out, m, std::regex(R"(Non-2xx or 3xx responses: (\d+))")))
        r.non_2xx = std::stol(m[1]);
    if (!r.ran || r.requests == 0)
        std::fprintf(stderr, "cluster-bench: wrk said:\n%s\n", out.c_str());
    return r;
}

// True once an HTTP GET on the port is answered with 200.
bool answers(int port) {
    const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{1, 0};
    ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    bool ok = false;
    if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
        const char request[] = "GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n";
        if (::send(s, request, sizeof request - 1, MSG_NOSIGNAL) > 0) {
            char buf[256];
            const ssize_t n = ::recv(s, buf, sizeof buf - 1, 0);
            ok = n > 12 &&
                 std::string(buf, static_cast<std::size_t>(n)).find(" 200 ") != std::string::npos;
        }
    }
    ::close(s);
    return ok;
}

bool wait_answers(int port) {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < deadline) {
        if (answers(port))
            return true;
        std::this_thread::sleep_for(20ms);
    }
    return false;
}

// A server under test: a busd with one app, or Node.
class Server {
public:
    Server(asio::io_context& io, std::vector<std::string> argv, int port, std::string dir = {})
        : io_(io), port_(port), dir_(std::move(dir)) {
        auto p = bus::spawn(io_, argv);
        if (!p) {
            std::fprintf(stderr, "cluster-bench: cannot start %s: %s\n", argv[0].c_str(),
                         p.error().message().c_str());
            return;
        }
        process_ = std::move(p).value();
        ready_ = wait_answers(port_);
        if (!ready_)
            std::fprintf(stderr, "cluster-bench: %s does not answer on port %d\n", argv[0].c_str(),
                         port_);
    }
    ~Server() {
        if (process_ && process_->running()) {
            process_->kill(SIGTERM);
            bool exited = false;
            process_->on_exit([&](int, int) { exited = true; });
            const auto deadline = std::chrono::steady_clock::now() + 10s;
            while (!exited && std::chrono::steady_clock::now() < deadline) {
                io_.restart();
                io_.run_for(10ms);
            }
        }
        process_.reset(); // SIGKILL if still running
        if (!dir_.empty())
            std::filesystem::remove_all(dir_);
    }
    bool ready() const { return ready_; }
    int port() const { return port_; }

private:
    asio::io_context& io_;
    int port_;
    std::string dir_;
    std::shared_ptr<bus::ChildProcess> process_;
    bool ready_ = false;
};

struct Busd {
    std::unique_ptr<Server> server;
    std::string socket;
};

Busd start_busd(asio::io_context& io, const std::string& mode, int port) {
    char tmpl[] = "/tmp/bus-cluster-bench-XXXXXX";
    const std::string dir = ::mkdtemp(tmpl);
    std::ofstream(dir + "/busd.toml")
        << "[[app]]\nname = \"hello\"\ncommand = \"" << bench::program_dir()
        << "/cluster-bench-worker\"\ninstances = 2\nlisten = [\"tcp://127.0.0.1:" << port
        << "\"]\nmode = \"" << mode << "\"\n";
    Busd b;
    b.socket = "unix://" + dir + "/busd.sock";
    b.server = std::make_unique<Server>(
        io,
        std::vector<std::string>{"/bin/sh", "-c",
                                 "exec " + bench::program_dir() + "/busd -e " + b.socket + " -c " +
                                     dir + "/busd.toml 2>>" + dir + "/busd.log"},
        port, dir);
    return b;
}

std::unique_ptr<Server> start_node(asio::io_context& io, bool cluster, int port) {
    return std::make_unique<Server>(io,
                                    std::vector<std::string>{"node", BUS_BENCH_NODE_HELLO,
                                                             cluster ? "cluster" : "single", "2",
                                                             std::to_string(port)},
                                    port);
}

std::optional<bus::v1::ClusterList> control(asio::io_context& io, bus::Client& client,
                                            const std::string& op) {
    io.restart(); // request_wait runs the loop, which an earlier run may have left stopped
    bus::v1::ClusterCommand command;
    command.set_app("hello");
    auto reply = client.request_wait("$sys.cluster." + op, command, 5s);
    if (!reply) {
        std::fprintf(stderr, "cluster-bench: $sys.cluster.%s: %s\n", op.c_str(),
                     reply.error().message().c_str());
        return std::nullopt;
    }
    auto list = reply.value().as<bus::v1::ClusterList>();
    if (!list)
        return std::nullopt;
    return list.value();
}

// Two ready workers, none starting or draining, none of `old` among them.
bool settled(const bus::v1::ClusterList& list, const std::set<std::uint32_t>& old) {
    if (list.apps_size() != 1 || list.apps(0).workers_size() != 2)
        return false;
    for (const auto& w : list.apps(0).workers())
        if (w.state() != "ready" || old.count(w.pid()))
            return false;
    return true;
}

std::set<std::uint32_t> pids(const bus::v1::ClusterList& list) {
    std::set<std::uint32_t> out;
    for (const auto& w : list.apps(0).workers())
        out.insert(w.pid());
    return out;
}

struct FaultResult {
    WrkResult wrk;
    int done = 0; // reloads completed, or workers killed
};

// wrk for `seconds` while `fault` runs `times` times, one every `every`.
FaultResult under_load(asio::io_context& io, const std::string& socket, int port, bool keep_alive,
                       int seconds, const Options& o, const std::string& what) {
    FaultResult result;
    io.restart();
    auto client = bus::Client::connect(io, socket);
    if (!client) {
        std::fprintf(stderr, "cluster-bench: cannot reach busd: %s\n",
                     client.error().message().c_str());
        return result;
    }
    auto wrk =
        std::async(std::launch::async, [&] { return run_wrk(port, keep_alive, seconds, o); });
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < (what == "reload" ? 5 : seconds); ++i) {
        std::this_thread::sleep_for(what == "reload" ? 1000ms : 1000ms);
        auto before = control(io, *client.value(), "ls");
        if (!before || before->apps_size() != 1 || before->apps(0).workers_size() == 0)
            continue;
        if (what == "reload") {
            const auto old = pids(*before);
            if (!control(io, *client.value(), "reload"))
                continue;
            // Until the reload is over: two new workers ready, the old ones gone.
            while (std::chrono::steady_clock::now() - start < std::chrono::seconds(seconds)) {
                auto now = control(io, *client.value(), "ls");
                if (now && settled(*now, old))
                    break;
                std::this_thread::sleep_for(20ms);
            }
        } else {
            const auto& workers = before->apps(0).workers();
            ::kill(static_cast<pid_t>(workers[i % workers.size()].pid()), SIGKILL);
        }
        ++result.done;
    }
    result.wrk = wrk.get();
    return result;
}

std::string ms(double v) {
    return bench::fixed(v, v < 10 ? 2 : 1);
}

} // namespace

int main(int argc, char** argv) {
    Options o;
    bench::OptionParser parser("cluster-bench", o, bench::OptionParser::without_only);
    parser.add("--connections", "N", [&](std::string_view v) {
        o.connections = static_cast<int>(bench::to_integer(v, 1));
    });
    parser.add("--threads", "N",
               [&](std::string_view v) { o.threads = static_cast<int>(bench::to_integer(v, 1)); });
    parser.parse(argc, argv);
    // wrk's -d counts whole seconds.
    const int seconds = static_cast<int>(o.seconds);
    if (seconds != o.seconds) {
        std::fprintf(stderr, "cluster-bench: --seconds takes whole seconds (wrk -d)\n");
        return 2;
    }
    asio::io_context io;
    std::printf("cluster: HTTP hello, 2 workers, wrk -t%d -c%d -d%ds on 127.0.0.1, median of %d "
                "interleaved rounds (errors: all rounds)\n\n",
                o.threads, o.connections, seconds, o.rounds);

    // Every server runs at once (idle ones cost nothing) and the measurements are interleaved
    // in rounds, so a burst of load from elsewhere on the machine hits every peer alike; each
    // peer's figures are those of its median round.
    struct Row {
        std::string name;
        Server* server;
        std::vector<WrkResult> close, keep;
    };
    auto rr = start_busd(io, "round_robin", bench::free_tcp_port());
    auto rp = start_busd(io, "reuseport", bench::free_tcp_port());
    auto node_cluster = start_node(io, true, bench::free_tcp_port());
    auto node_single = start_node(io, false, bench::free_tcp_port());
    std::vector<Row> rows = {{"busd round_robin", rr.server.get(), {}, {}},
                             {"busd reuseport", rp.server.get(), {}, {}},
                             {"node cluster (round-robin)", node_cluster.get(), {}, {}},
                             {"node, one process", node_single.get(), {}, {}}};
    for (int round = 1; round <= o.rounds; ++round)
        for (auto& r : rows) {
            if (!r.server->ready())
                continue;
            std::fprintf(stderr, "cluster-bench: round %d, %s\n", round, r.name.c_str());
            r.close.push_back(run_wrk(r.server->port(), false, seconds, o));
            r.keep.push_back(run_wrk(r.server->port(), true, seconds, o));
            std::fprintf(stderr, "  close %.0f req/s, keep-alive %.0f req/s\n",
                         r.close.back().requests_per_s, r.keep.back().requests_per_s);
        }
    auto median = [](std::vector<WrkResult> v) {
        WrkResult out;
        if (v.empty())
            return out;
        long errors = 0;
        for (const auto& w : v)
            errors += w.errors();
        std::sort(v.begin(), v.end(), [](const WrkResult& a, const WrkResult& b) {
            return a.requests_per_s < b.requests_per_s;
        });
        out = v[v.size() / 2];
        out.connect_errors = errors; // all rounds' errors, shown as one figure
        out.read_errors = out.write_errors = out.timeouts = out.non_2xx = 0;
        return out;
    };
    struct Summary {
        std::string name;
        WrkResult close, keep;
    };
    std::vector<Summary> summary;
    for (const auto& r : rows)
        summary.push_back({r.name, median(r.close), median(r.keep)});
    rr.server.reset();
    rp.server.reset();
    node_cluster.reset();
    node_single.reset();

    bench::Table table({{"server", bench::Align::left},
                        {"close req/s"},
                        {"p50 ms"},
                        {"p99 ms"},
                        {"errors"},
                        {"keep-alive req/s"},
                        {"p50 ms"},
                        {"p99 ms"},
                        {"errors"}});
    for (const auto& r : summary)
        table.add_row({r.name, bench::thousands(r.close.requests_per_s), ms(r.close.p50_ms),
                       ms(r.close.p99_ms), std::to_string(r.close.errors()),
                       bench::thousands(r.keep.requests_per_s), ms(r.keep.p50_ms),
                       ms(r.keep.p99_ms), std::to_string(r.keep.errors())});
    table.print(stdout);
    std::printf("\n");

    // Faults under load, busd round_robin.
    const int fault_seconds = 10;
    bench::Table faults({{"under load (busd round_robin)", bench::Align::left},
                         {"done"},
                         {"requests"},
                         {"connect"},
                         {"read"},
                         {"write"},
                         {"timeout"},
                         {"non-2xx"}});
    std::map<std::string, FaultResult> fault_results;
    for (const std::string what : {"reload", "kill"})
        for (const bool keep_alive : {false, true}) {
            const std::string name = (what == "reload" ? "5 reloads, " : "SIGKILL every 1 s, ") +
                                     std::string(keep_alive ? "keep-alive" : "Connection: close");
            std::fprintf(stderr, "cluster-bench: %s\n", name.c_str());
            auto b = start_busd(io, "round_robin", bench::free_tcp_port());
            FaultResult f;
            if (b.server->ready())
                f = under_load(io, b.socket, b.server->port(), keep_alive,
                               what == "reload" ? fault_seconds : fault_seconds, o, what);
            fault_results[what + (keep_alive ? ".keep" : ".close")] = f;
            faults.add_row({name, std::to_string(f.done), bench::thousands(f.wrk.requests),
                            std::to_string(f.wrk.connect_errors), std::to_string(f.wrk.read_errors),
                            std::to_string(f.wrk.write_errors), std::to_string(f.wrk.timeouts),
                            std::to_string(f.wrk.non_2xx)});
        }
    faults.print(stdout);
    std::printf("\n");

    auto rate = [&](const std::string& name) {
        for (const auto& r : summary)
            if (r.name == name)
                return r.close.requests_per_s;
        return 0.0;
    };
    const double rr_rate = rate("busd round_robin"), rp_rate = rate("busd reuseport"),
                 node = rate("node cluster (round-robin)");
    // Information, not a bar: reuseport alone (no master at all) is about 4x Node's cluster
    // here, so "5x Node" asked more of a master than having none gives (bench/RESULTS.md).
    if (node > 0)
        std::printf("info: cluster.close.rr_vs_node_cluster measured=%.2f\n", rr_rate / node);
    bench::print_bar(
        stdout, {"cluster.close.rr_vs_reuseport", rp_rate > 0 ? rr_rate / rp_rate : 0, "0.90"});
    for (const auto& key : {"reload.close", "reload.keep"}) {
        const auto& f = fault_results[key];
        bench::print_bar(stdout,
                         {std::string("cluster.") + key + ".errors",
                          f.done == 5 ? static_cast<double>(f.wrk.errors()) : 1e9, "0", true});
    }
    for (const auto& key : {"kill.close", "kill.keep"}) {
        const auto& f = fault_results[key];
        bench::print_bar(stdout,
                         {std::string("cluster.") + key + ".timeouts",
                          f.done > 0 ? static_cast<double>(f.wrk.timeouts) : 1e9, "0", true});
    }
    return 0;
}
