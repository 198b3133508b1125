// The NATS bridge's benchmark (issue 19): host A's publisher -> busd A -> NATS -> busd B -> a
// subscriber on B, beside the same path with nats.c clients publishing and subscribing on the
// NATS servers directly (the floor); and a request across the bridge beside a direct NATS
// request and a local unix:// request (what the bridge may add at each end).
//
// Two nats-servers in a cluster (routes on 127.0.0.1) stand for the NATS cluster, two busds
// with runtime dirs of their own for the two hosts: A bridged to the first server, B to the
// second. Rates are lossless: the publisher sends windows of `window` messages and waits until
// the subscriber has all of a window before the next, so nothing is lost and the rate is what
// the whole path carries.
#include "common/options.hpp"
#include "common/process.hpp"
#include "common/report.hpp"

#include <bus/client.hpp>

#include <nats/nats.h>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr std::size_t window = 500;

// A process of the benchmark's, stopped (SIGTERM, then reaped) when it goes.
class Process {
public:
    explicit Process(std::vector<std::string> argv) {
        std::vector<char*> args;
        for (auto& a : argv)
            args.push_back(a.data());
        args.push_back(nullptr);
        if (::posix_spawnp(&pid_, args[0], nullptr, nullptr, args.data(), environ) != 0)
            throw std::runtime_error("cannot start " + argv[0]);
    }
    ~Process() {
        ::kill(pid_, SIGTERM);
        ::waitpid(pid_, nullptr, 0);
    }
    Process(const Process&) = delete;
    Process& operator=(const Process&) = delete;

private:
    pid_t pid_ = 0;
};

bool wait_for(const std::function<bool()>& done, std::chrono::seconds limit = 20s) {
    const auto deadline = Clock::now() + limit;
    while (!done()) {
        if (Clock::now() > deadline)
            return false;
        std::this_thread::sleep_for(20ms);
    }
    return true;
}

// nats.c: a connection to `url`, or an exception.
natsConnection* nats_connect(const std::string& url) {
    natsConnection* nc = nullptr;
    if (natsConnection_ConnectTo(&nc, url.c_str()) != NATS_OK)
        throw std::runtime_error("cannot connect to " + url);
    return nc;
}

struct World {
    std::string dir;
    int port[2]{}, route[2]{};
    std::vector<std::unique_ptr<Process>> processes;

    std::string url(int i) const { return "nats://127.0.0.1:" + std::to_string(port[i]); }
    std::string endpoint(char host) const { return "unix://" + dir + "/" + host + "/busd.sock"; }

    World() {
        char tmpl[] = "/tmp/bus-bridge-bench-XXXXXX";
        dir = ::mkdtemp(tmpl);
        for (int i = 0; i < 2; ++i) {
            port[i] = bench::free_tcp_port();
            route[i] = bench::free_tcp_port();
        }
        for (int i = 0; i < 2; ++i) {
            const std::string conf = dir + "/n" + std::to_string(i) + ".conf";
            std::ofstream(conf) << "listen: 127.0.0.1:" << port[i]
                                << "\ncluster {\n  name: bench\n  listen: 127.0.0.1:" << route[i]
                                << "\n  routes: [\"nats-route://127.0.0.1:" << route[1 - i]
                                << "\"]\n}\n";
            processes.push_back(std::make_unique<Process>(
                std::vector<std::string>{"nats-server", "-c", conf, "-l", conf + ".log"}));
        }
        // The cluster is formed when a subscription on one server is seen from the other.
        if (!wait_for([&] {
                try {
                    natsConnection* a = nats_connect(url(0));
                    natsConnection* b = nats_connect(url(1));
                    natsSubscription* sub = nullptr;
                    natsConnection_SubscribeSync(&sub, b, "bench.probe");
                    natsConnection_Flush(b);
                    std::this_thread::sleep_for(50ms);
                    natsConnection_PublishString(a, "bench.probe", "x");
                    natsMsg* m = nullptr;
                    const bool ok = natsSubscription_NextMsg(&m, sub, 200) == NATS_OK;
                    natsMsg_Destroy(m);
                    natsSubscription_Destroy(sub);
                    natsConnection_Destroy(a);
                    natsConnection_Destroy(b);
                    return ok;
                } catch (const std::exception&) {
                    return false;
                }
            }))
            throw std::runtime_error("the NATS cluster did not form");
        busd('a', 0, "[\"bench.>\"]", "[\"bench.svc\"]");
        busd('b', 1, "[\"bench.svc\"]", "[\"bench.>\"]");
    }
    ~World() {
        // The busds first, then the servers they are bridged to.
        while (!processes.empty())
            processes.pop_back();
        std::error_code ignored;
        std::filesystem::remove_all(dir, ignored);
    }

    void busd(char host, int server, const std::string& exports, const std::string& imports) {
        const std::string home = dir + "/" + host;
        std::filesystem::create_directories(home);
        std::ofstream(home + "/busd.toml")
            << "[[bridge.nats]]\nname = \"bench\"\nservers = [\"" << url(server)
            << "\"]\nexport = " << exports << "\nimport = " << imports << "\n";
        processes.push_back(std::make_unique<Process>(std::vector<std::string>{
            BUS_BENCH_BUSD, "-e", "unix://" + home + "/busd.sock", "-c", home + "/busd.toml"}));
        if (!wait_for([&] { return std::filesystem::exists(home + "/busd.sock"); }))
            throw std::runtime_error("busd did not start");
    }
};

std::shared_ptr<bus::Client> connect(boost::asio::io_context& io, const std::string& endpoint) {
    auto c = bus::Client::connect(io, endpoint);
    if (!c)
        throw std::runtime_error("cannot connect to " + endpoint);
    auto client = std::move(c).value();
    const auto deadline = Clock::now() + 10s;
    while (!client->connected() && Clock::now() < deadline)
        io.run_for(5ms);
    return client;
}

// Messages per second from A's publisher to B's subscriber through the bridges, lossless.
double bridge_rate(World& w, std::size_t size, double seconds) {
    boost::asio::io_context io;
    auto pub = connect(io, w.endpoint('a'));
    auto sub = connect(io, w.endpoint('b'));
    std::size_t got = 0;
    sub->subscribe("bench.data", [&](bus::Message&) { ++got; });
    (void)sub->flush_wait();
    const std::string payload(size, 'x');
    // Warm-up: until the bridges carry it (they subscribe asynchronously).
    for (const auto deadline = Clock::now() + 20s; got == 0;) {
        if (Clock::now() > deadline)
            throw std::runtime_error("nothing crosses the bridges");
        pub->publish_bytes("bench.data", payload);
        io.run_for(50ms);
    }
    io.run_for(200ms);
    got = 0;
    std::size_t sent = 0;
    const auto start = Clock::now();
    while (Clock::now() - start < std::chrono::duration<double>(seconds)) {
        for (std::size_t i = 0; i < window; ++i)
            pub->publish_bytes("bench.data", payload);
        sent += window;
        const auto stalled = Clock::now() + 5s;
        while (got < sent && Clock::now() < stalled)
            io.run_one_for(10ms);
        if (got < sent)
            throw std::runtime_error("the bridge lost messages: " + std::to_string(sent - got));
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    pub->close();
    sub->close();
    return static_cast<double>(got) / elapsed;
}

// The same path with nats.c clients on the NATS servers directly: the floor.
double nats_rate(World& w, std::size_t size, double seconds) {
    natsConnection* pub = nats_connect(w.url(0));
    natsConnection* sub_conn = nats_connect(w.url(1));
    std::atomic<std::size_t> got{0};
    natsSubscription* sub = nullptr;
    natsConnection_Subscribe(
        &sub, sub_conn, "floor.data",
        [](natsConnection*, natsSubscription*, natsMsg* m, void* closure) {
            ++*static_cast<std::atomic<std::size_t>*>(closure);
            natsMsg_Destroy(m);
        },
        &got);
    natsSubscription_SetPendingLimits(sub, -1, -1);
    natsConnection_Flush(sub_conn);
    const std::string payload(size, 'x');
    for (const auto deadline = Clock::now() + 20s; got == 0;) {
        if (Clock::now() > deadline)
            throw std::runtime_error("nothing crosses the NATS cluster");
        natsConnection_Publish(pub, "floor.data", payload.data(), static_cast<int>(size));
        natsConnection_Flush(pub);
        std::this_thread::sleep_for(20ms);
    }
    std::this_thread::sleep_for(200ms);
    got = 0;
    std::size_t sent = 0;
    const auto start = Clock::now();
    while (Clock::now() - start < std::chrono::duration<double>(seconds)) {
        for (std::size_t i = 0; i < window; ++i)
            natsConnection_Publish(pub, "floor.data", payload.data(), static_cast<int>(size));
        sent += window;
        const auto stalled = Clock::now() + 5s;
        while (got < sent && Clock::now() < stalled)
            std::this_thread::yield();
        if (got < sent)
            throw std::runtime_error("NATS lost messages");
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(pub);
    natsConnection_Destroy(sub_conn);
    return static_cast<double>(got.load()) / elapsed;
}

// Median microseconds of a request from a bus client on A to `service` (a bus service on
// `server_host`), one at a time.
double bus_request_us(World& w, char server_host, const std::string& service, double seconds) {
    boost::asio::io_context io;
    auto server = connect(io, w.endpoint(server_host));
    server->serve(service, [](bus::Message& m, bus::Responder& r) { r.reply_bytes(m.payload()); });
    (void)server->flush_wait();
    auto client = connect(io, w.endpoint('a'));
    std::vector<double> samples;
    bool ok = false;
    const auto ask = [&] {
        std::optional<std::error_code> done;
        const auto t0 = Clock::now();
        client->request_bytes(service, "ping", 5s,
                              [&](std::error_code ec, bus::Message&) { done = ec; });
        while (!done)
            io.run_one();
        ok = !*done;
        return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    };
    for (const auto deadline = Clock::now() + 20s; !ok && Clock::now() < deadline;) {
        ask(); // until the bridges serve it
        if (!ok)
            io.run_for(50ms);
    }
    const auto start = Clock::now();
    while (Clock::now() - start < std::chrono::duration<double>(seconds))
        samples.push_back(ask());
    client->close();
    server->close();
    return bench::percentile(samples, 0.5);
}

// Median microseconds of a nats.c request from the first server to a nats.c responder on the
// second.
double nats_request_us(World& w, double seconds) {
    natsConnection* responder = nats_connect(w.url(1));
    natsConnection* requester = nats_connect(w.url(0));
    natsSubscription* sub = nullptr;
    natsConnection_Subscribe(
        &sub, responder, "floor.svc",
        [](natsConnection* nc, natsSubscription*, natsMsg* m, void*) {
            natsConnection_Publish(nc, natsMsg_GetReply(m), natsMsg_GetData(m),
                                   natsMsg_GetDataLength(m));
            natsMsg_Destroy(m);
        },
        nullptr);
    natsConnection_Flush(responder);
    std::vector<double> samples;
    natsMsg* reply = nullptr;
    while (natsConnection_RequestString(&reply, requester, "floor.svc", "ping", 1000) != NATS_OK)
        std::this_thread::sleep_for(50ms);
    natsMsg_Destroy(reply);
    const auto start = Clock::now();
    while (Clock::now() - start < std::chrono::duration<double>(seconds)) {
        const auto t0 = Clock::now();
        if (natsConnection_RequestString(&reply, requester, "floor.svc", "ping", 5000) == NATS_OK)
            natsMsg_Destroy(reply);
        samples.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(requester);
    natsConnection_Destroy(responder);
    return bench::percentile(samples, 0.5);
}

} // namespace

int run(const bench::Options& options);

int main(int argc, char** argv) {
    bench::Options options;
    bench::OptionParser parser("bridge-bench", options);
    parser.parse(argc, argv);
    ::signal(SIGPIPE, SIG_IGN);
    try {
        return run(options);
    } catch (const std::exception& e) { // (the World's processes are stopped on the way out)
        std::fprintf(stderr, "bridge-bench: %s\n", e.what());
        return 1;
    }
}

int run(const bench::Options& options) {
    World world;

    std::map<std::string, bench::Samples> samples;
    auto run = [&](const std::string& name, const std::function<double()>& once) {
        if (!options.selected(name))
            return;
        for (int r = 0; r < options.rounds; ++r)
            samples[name].values.push_back(once());
        std::fprintf(stderr, "%s done\n", name.c_str());
    };
    for (std::size_t size : {std::size_t(64), std::size_t(1024)}) {
        const auto s = bench::size_name(size);
        run("pubsub.bridge." + s, [&] { return bridge_rate(world, size, options.seconds); });
        run("pubsub.nats." + s, [&] { return nats_rate(world, size, options.seconds); });
    }
    run("req.bridge", [&] { return bus_request_us(world, 'b', "bench.svc", options.seconds); });
    run("req.nats", [&] { return nats_request_us(world, options.seconds); });
    run("req.local", [&] { return bus_request_us(world, 'a', "bench.local", options.seconds); });

    bench::Table rates({{"path", bench::Align::left},
                        {"size", bench::Align::left},
                        {"msgs/s (lossless)"},
                        {"spread"},
                        {"of NATS"}});
    for (const char* s : {"64B", "1KiB"}) {
        const auto b = bench::median_of(samples, std::string("pubsub.bridge.") + s);
        const auto n = bench::median_of(samples, std::string("pubsub.nats.") + s);
        if (b)
            rates.add_row({"A -> busd A -> NATS -> busd B -> B", s, bench::thousands(*b),
                           samples["pubsub.bridge." + std::string(s)].spread(),
                           bench::ratio_text(b, n)});
        if (n)
            rates.add_row({"nats.c -> NATS -> nats.c (floor)", s, bench::thousands(*n),
                           samples["pubsub.nats." + std::string(s)].spread(), "1.00"});
    }
    rates.print(stdout);
    std::printf("\n");
    bench::Table requests({{"request", bench::Align::left}, {"p50 µs"}, {"spread"}});
    const auto rb = bench::median_of(samples, "req.bridge");
    const auto rn = bench::median_of(samples, "req.nats");
    const auto rl = bench::median_of(samples, "req.local");
    if (rb)
        requests.add_row({"bus A -> bridge -> NATS -> bridge -> bus B", bench::fixed(*rb, 1),
                          samples["req.bridge"].spread()});
    if (rn)
        requests.add_row(
            {"nats.c -> NATS -> nats.c", bench::fixed(*rn, 1), samples["req.nats"].spread()});
    if (rl)
        requests.add_row({"bus -> busd (unix://) -> bus, one host", bench::fixed(*rl, 1),
                          samples["req.local"].spread()});
    requests.print(stdout);
    std::printf("\n");
    for (const char* s : {"64B", "1KiB"})
        bench::print_ratio_bar(stdout, std::string("bridge_pubsub_") + s + "_of_nats",
                               bench::median_of(samples, std::string("pubsub.bridge.") + s),
                               bench::median_of(samples, std::string("pubsub.nats.") + s), "0.8");
    // What the bridge adds to a request, in local unix:// round trips (at most one at each end).
    if (rb && rn && rl)
        bench::print_ratio_bar(stdout, "bridge_request_added_local_round_trips", *rb - *rn, *rl,
                               "2", true);
    return 0;
}
