// http-bench: what busd's HTTP face (issue 18, docs/http.md) costs the bus, and how fast it
// answers, beside nats-server's monitoring port.
//
// 1. load: busd's pub -> sub rate, 64 B over unix:// (broker-bench's pubsub64.bus-unix: one
//    publisher as fast as busd acknowledges it, one subscriber; the rate is what arrived from
//    the first message to the last), for one busd run per condition:
//      idle    busd --http 127.0.0.1:0, nobody connected to the HTTP face
//      loaded  the same, while a forked process plays Prometheus and an open dashboard: GET
//              /metrics every 100 ms on a kept-alive connection, and what the dashboard page
//              asks for: /events held open (server-sent events, read and thrown away) and GET
//              /api/v1/stats, /api/v1/clients and /api/v1/apps every second on another
//              kept-alive connection. No browser: it would take busd's CPUs and measure itself.
//      off     busd without --http, for reference
//    The conditions alternate within each round (their order rotates from round to round), so
//    drift on the shared machine falls on all of them; the table shows each condition's median
//    and the bar compares loaded with idle.
// 2. serve: the time to answer one GET, on one kept-alive connection from the bench, with 1,000
//    subjects and 100 clients: busd's /metrics (100 bus::Clients over unix://, 10 subscriptions
//    each on distinct subjects, and one publish on each subject, so that busd has statistics for
//    1,000 subjects: what /metrics renders per subject), beside nats-server's /subsz?subs=1 and
//    /connz on its monitoring port (-m) with 100 connections holding the same 1,000
//    subscriptions, one message published on each. Both servers run at once; the GETs alternate
//    between them in rounds, and the table shows the median and p99 of all GETs.
//
// Benchmarks print; nothing here fails on a number. Exits non-zero only when a case broke.
//
//   http-bench [--seconds S] [--rounds R] [--only load,serve] [--gets N] [--busd PATH] [--keep]
#include "broker/harness.hpp"
#include "broker/nats_client.hpp"
#include "broker/peers.hpp"
#include "broker/pubsub_case.hpp"
#include "broker/session.hpp"
#include "common/options.hpp"
#include "common/process.hpp"
#include "common/report.hpp"

#include <bus/client.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef BUS_BENCH_BUSD
#define BUS_BENCH_BUSD ""
#endif

namespace {

using namespace bench::broker;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

struct Options : bench::Options {
    Options() {
        seconds = 1.5;
        rounds = 7;
    }
    int gets = 300; // per path, over all rounds
    ServerFlags server{BUS_BENCH_BUSD};
};

constexpr int scrape_ms = 100;
constexpr int dashboard_ms = 1000;
constexpr int subjects = 1000;
constexpr int clients = 100;

// --- a small HTTP client ----------------------------------------------------------------------

// One kept-alive connection to 127.0.0.1:port, with blocking GETs.
class HttpConnection {
public:
    explicit HttpConnection(int port) : socket_(io_) {
        socket_.connect({asio::ip::address_v4::loopback(), static_cast<unsigned short>(port)});
        socket_.set_option(tcp::no_delay(true));
    }

    // The body of GET `path`; throws unless the answer is 200.
    std::string get(const std::string& path) {
        http::request<http::empty_body> request{http::verb::get, path, 11};
        request.set(http::field::host, "127.0.0.1");
        http::write(socket_, request);
        http::response_parser<http::string_body> parser;
        parser.body_limit(256 * 1024 * 1024);
        http::read(socket_, buffer_, parser);
        if (parser.get().result_int() != 200)
            throw std::runtime_error("GET " + path + ": " +
                                     std::to_string(parser.get().result_int()));
        return std::move(parser.get().body());
    }

    // Sends GET `path` and returns without reading the answer (a stream: read_some()).
    void open_stream(const std::string& path) {
        const std::string request = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        asio::write(socket_, asio::buffer(request));
    }
    // What arrives next; 0 at the end of the stream.
    std::size_t read_some() {
        char sink[16384];
        boost::system::error_code ec;
        return socket_.read_some(asio::buffer(sink), ec);
    }
    // Wakes a read_some() blocked in another thread.
    void shutdown() { ::shutdown(socket_.native_handle(), SHUT_RDWR); }

private:
    asio::io_context io_;
    tcp::socket socket_;
    beast::flat_buffer buffer_;
};

// busd prints "busd: http on http://127.0.0.1:PORT" once it serves HTTP.
int http_port_from_log(const std::string& log, const Server* server) {
    const std::string marker = "busd: http on http://127.0.0.1:";
    const double deadline = now_s() + 10;
    while (now_s() < deadline) {
        std::ifstream in(log);
        for (std::string line; std::getline(in, line);)
            if (const auto at = line.find(marker); at != std::string::npos)
                return std::stoi(line.substr(at + marker.size()));
        if (server && !server->running())
            break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    throw std::runtime_error("busd printed no http address in " + log);
}

// --- 1. load ----------------------------------------------------------------------------------

// Sleeps until a time or until stop(), whichever comes first.
class Stopper {
public:
    void stop() {
        std::lock_guard lock(mutex_);
        stopped_ = true;
        wake_.notify_all();
    }
    // False once stopped.
    bool sleep_until(std::chrono::steady_clock::time_point t) {
        std::unique_lock lock(mutex_);
        return !wake_.wait_until(lock, t, [&] { return stopped_; });
    }

private:
    std::mutex mutex_;
    std::condition_variable wake_;
    bool stopped_ = false;
};

// Every `period`, `work`, until stopped (a turn that runs late starts the next one at once).
void every(Stopper& stopper, std::chrono::milliseconds period, const std::function<void()>& work) {
    auto next = std::chrono::steady_clock::now();
    do {
        work();
        next += period;
        next = std::max(next, std::chrono::steady_clock::now());
    } while (stopper.sleep_until(next));
}

// The forked process that plays Prometheus and the dashboard against busd's face on `port`,
// until the bench says "stop"; reports what it did.
void http_load(int port, RoleIo& io) {
    HttpConnection prometheus(port), dashboard(port), events(port);
    events.open_stream("/events");
    prometheus.get("/metrics");
    std::atomic<std::uint64_t> event_bytes{0};
    std::vector<double> scrape_ms_samples;
    std::uint64_t polls = 0, metrics_bytes = 0;
    std::string failure;
    std::mutex failure_mutex;
    auto guarded = [&](const std::function<void()>& body) {
        try {
            body();
        } catch (const std::exception& e) {
            std::lock_guard lock(failure_mutex);
            failure = e.what();
        }
    };
    Stopper stopper;
    std::thread reader([&] {
        while (const std::size_t n = events.read_some())
            event_bytes += n;
    });
    std::thread scraper([&] {
        guarded([&] {
            every(stopper, std::chrono::milliseconds(scrape_ms), [&] {
                const double t0 = now_s();
                metrics_bytes = prometheus.get("/metrics").size();
                scrape_ms_samples.push_back((now_s() - t0) * 1000);
            });
        });
    });
    std::thread page([&] {
        guarded([&] {
            every(stopper, std::chrono::milliseconds(dashboard_ms), [&] {
                for (const char* path : {"/api/v1/stats", "/api/v1/clients", "/api/v1/apps"})
                    dashboard.get(path);
                ++polls;
            });
        });
    });
    io.ready();
    io.wait_control(); // "stop"
    stopper.stop();
    scraper.join();
    page.join();
    events.shutdown();
    reader.join();
    if (!failure.empty())
        throw std::runtime_error(failure);
    io.result({{"scrapes", scrape_ms_samples.size()},
               {"scrape_p50_ms", bench::percentile(scrape_ms_samples, 0.5)},
               {"scrape_max_ms", bench::percentile(scrape_ms_samples, 1.0)},
               {"metrics_bytes", metrics_bytes},
               {"polls", polls},
               {"event_bytes", event_bytes.load()}});
}

// A process's user + system CPU time so far (/proc/PID/stat), in seconds.
double cpu_seconds(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    // After the command's closing parenthesis: state is field 3, utime and stime 14 and 15.
    std::istringstream fields(stat.substr(stat.rfind(')') + 2));
    std::string field;
    double ticks = 0;
    for (int i = 3; i <= 15 && fields >> field; ++i)
        if (i >= 14)
            ticks += std::stod(field);
    return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

struct Condition {
    std::string name;
    std::string label;
    bool http = false;
    bool loaded = false;
};

const std::vector<Condition> conditions{
    {"idle", "busd --http, nobody on it", true, false},
    {"loaded", "busd --http, /metrics every 100 ms + dashboard", true, true},
    {"off", "busd without --http", false, false},
};

std::map<std::string, bench::Samples> results;

void record(const std::string& key, double value) {
    results[key].values.push_back(value);
}

std::optional<double> median_of(const std::string& key) {
    return bench::median_of(results, key);
}

void load_run(const Paths& paths, Runs& runs, const Options& options, const Condition& c) {
    auto peer = make_bus_peer(paths, "unix",
                              c.http ? std::vector<std::string>{"--http", "127.0.0.1:0"}
                                     : std::vector<std::string>{});
    std::optional<Child> load;
    PubSubHooks hooks;
    double cpu_before = 0;
    hooks.started = [&](const std::string& dir) {
        cpu_before = cpu_seconds(peer->broker_pid());
        if (c.loaded) {
            const int port = http_port_from_log(dir + "/busd.log", nullptr);
            load.emplace(fork_role("http load", [port](RoleIo& io) { http_load(port, io); }));
            load->read(20); // ready: connected, /events open, one scrape served
        }
    };
    hooks.finished = [&] {
        record(c.name + "|cpu", cpu_seconds(peer->broker_pid()) - cpu_before);
        if (c.loaded) {
            load->send("stop");
            const auto r = load->read(20);
            load->wait(10);
            record("loaded|scrapes", r.at("scrapes").get<double>());
            record("loaded|scrape_p50_ms", r.at("scrape_p50_ms").get<double>());
            record("loaded|scrape_max_ms", r.at("scrape_max_ms").get<double>());
            record("loaded|metrics_bytes", r.at("metrics_bytes").get<double>());
            record("loaded|polls", r.at("polls").get<double>());
            record("loaded|event_bytes", r.at("event_bytes").get<double>());
        }
    };
    PubSubSpec spec;
    spec.seconds = options.seconds;
    spec.keep = options.server.keep;
    const auto out = run_pubsub(*peer, runs, spec, hooks);
    record(c.name + "|delivered", out.delivered_rate);
    record(c.name + "|sent", out.sent_rate);
    record(c.name + "|loss", out.loss);
    // busd's CPU time per message it took from the publisher, while the run lasted (HTTP included).
    const double cpu = results[c.name + "|cpu"].values.back();
    const double us_per_msg = out.pub.sent ? cpu * 1e6 / static_cast<double>(out.pub.sent) : 0;
    record(c.name + "|cpu_us", us_per_msg);
    std::fprintf(stderr,
                 "  %-7s sent %10.0f/s  delivered %10.0f/s  loss %6.3f%%  busd %.2f s CPU, "
                 "%.3f us/msg\n",
                 c.name.c_str(), out.sent_rate, out.delivered_rate, 100 * out.loss, cpu,
                 us_per_msg);
}

// --- 2. serve ---------------------------------------------------------------------------------

std::string subject_name(int i) {
    return "bench.subject." + std::to_string(i);
}

// 100 bus::Clients, 10 subscriptions each on distinct subjects, and one publish on each
// subject; ready once busd has routed them all; until the bench closes the pipe.
void bus_population(const std::string& endpoint, RoleIo& io) {
    asio::io_context ctx;
    std::vector<std::shared_ptr<bus::Client>> all;
    int pending = clients;
    std::error_code failure;
    const std::string payload = make_payload(64);
    auto flushed = [&](std::error_code ec) {
        if (ec) {
            failure = ec;
            return ctx.stop();
        }
        if (--pending > 0)
            return;
        if (pending == 0) {
            // Every subscription is in; now one message per subject.
            for (int s = 0; s < subjects; ++s)
                all[0]->publish_bytes(subject_name(s), payload);
            all[0]->flush([&](std::error_code e) {
                if (e) {
                    failure = e;
                    return ctx.stop();
                }
                io.ready();
            });
        }
    };
    for (int i = 0; i < clients; ++i) {
        bus::ClientOptions o;
        o.name = "bench-client-" + std::to_string(i);
        auto c = bus::Client::connect(ctx, endpoint, o).value();
        for (int s = i * (subjects / clients); s < (i + 1) * (subjects / clients); ++s)
            c->subscribe(subject_name(s), [](bus::Message&) {});
        c->flush(flushed);
        all.push_back(std::move(c));
    }
    // Until the bench closes the pipe.
    asio::posix::stream_descriptor control(ctx, ::dup(io.control_fd()));
    std::function<void()> watch = [&] {
        control.async_wait(asio::posix::stream_descriptor::wait_read, [&](auto ec) {
            if (ec || !io.read_control([](const std::string&) {}))
                return ctx.stop();
            watch();
        });
    };
    watch();
    ctx.run();
    if (failure)
        throw std::system_error(failure, "bus clients");
}

// The same population on nats-server: 100 connections, 1,000 subscriptions, one message each.
void nats_population(int port, RoleIo& io) {
    std::vector<std::unique_ptr<NatsConnection>> all;
    for (int i = 0; i < clients; ++i) {
        auto c = std::make_unique<NatsConnection>();
        c->connect(port, "bench-client-" + std::to_string(i));
        for (int s = i * (subjects / clients); s < (i + 1) * (subjects / clients); ++s)
            c->sub(subject_name(s), static_cast<std::uint64_t>(s + 1));
        c->ping_pong(5); // the server has them
        all.push_back(std::move(c));
    }
    const std::string payload = make_payload(64);
    for (int s = 0; s < subjects; ++s)
        all[0]->pub(subject_name(s), {}, payload);
    all[0]->ping_pong(5);
    for (auto& c : all)
        c->ping_pong(5); // each has read what was delivered to it
    io.ready();
    io.wait_control();
}

struct Target {
    std::string server, path, holds;
    int port = 0;
    pid_t pid = -1; // the server's, whose CPU time it costs
    std::vector<double> ms;
    std::size_t bytes = 0;
    double cpu_s = 0; // the server's CPU time over the timed GETs
    int gets = 0;
};

// What a body holds, as a check that the servers hold what the bench made.
std::string holds(const Target& t, const std::string& body) {
    if (t.path == "/metrics") {
        int bench_subjects = 0, other_subjects = 0, client_lines = 0;
        std::istringstream in(body);
        for (std::string line; std::getline(in, line);) {
            if (line.starts_with("bus_subject_messages_in_total{subject=\"bench."))
                ++bench_subjects;
            else if (line.starts_with("bus_subject_messages_in_total{"))
                ++other_subjects; // busd's own ($sys.client.connected), and (other)
            client_lines += line.starts_with("bus_client_subscriptions{");
        }
        return std::to_string(bench_subjects) + "+" + std::to_string(other_subjects) +
               " subjects, " + std::to_string(client_lines) + " clients";
    }
    const auto j = nlohmann::json::parse(body);
    if (t.path.starts_with("/subsz"))
        return std::to_string(j.at("num_subscriptions").get<long>()) + " subscriptions";
    if (t.path.starts_with("/connz"))
        return std::to_string(j.at("num_connections").get<long>()) + " connections";
    return "";
}

std::vector<Target> serve_case(const Paths& paths, const Options& options,
                               const std::string& base) {
    const std::string dir = base + "/serve";
    if (::mkdir(dir.c_str(), 0700) < 0)
        bench::throw_errno("mkdir " + dir);
    const std::string socket = dir + "/busd.sock";
    Server busd = Server::spawn({paths.busd, "-e", "unix://" + socket, "--http", "127.0.0.1:0"},
                                dir + "/busd.log");
    wait_for_unix(socket, 10, &busd);
    const int busd_port = http_port_from_log(dir + "/busd.log", &busd);
    const int nats_port = bench::free_tcp_port(), monitor_port = bench::free_tcp_port();
    Server nats =
        Server::spawn({paths.nats_server, "-a", "127.0.0.1", "-p", std::to_string(nats_port), "-m",
                       std::to_string(monitor_port), "-n", "http-bench"},
                      dir + "/nats.log");
    wait_for_tcp(nats_port, 10, &nats);
    wait_for_tcp(monitor_port, 10, &nats);

    Child bus_clients =
        fork_role("bus clients", [&](RoleIo& io) { bus_population("unix://" + socket, io); });
    Child nats_clients =
        fork_role("nats clients", [&](RoleIo& io) { nats_population(nats_port, io); });
    bus_clients.read(60);
    nats_clients.read(60);

    std::vector<Target> targets{
        {"busd", "/metrics", "", busd_port, busd.pid(), {}, 0, 0, 0},
        {"busd", "/api/v1/stats", "", busd_port, busd.pid(), {}, 0, 0, 0},
        {"busd", "/api/v1/clients", "", busd_port, busd.pid(), {}, 0, 0, 0},
        {"nats-server", "/subsz?subs=1", "", monitor_port, nats.pid(), {}, 0, 0, 0},
        {"nats-server", "/connz", "", monitor_port, nats.pid(), {}, 0, 0, 0},
    };
    std::vector<std::unique_ptr<HttpConnection>> connections;
    for (auto& t : targets) {
        connections.push_back(std::make_unique<HttpConnection>(t.port));
        std::string body;
        for (int i = 0; i < 10; ++i) // warm-up
            body = connections.back()->get(t.path);
        t.bytes = body.size();
        t.holds = holds(t, body);
    }
    const int per_round = std::max(1, options.gets / options.rounds);
    for (int round = 1; round <= options.rounds; ++round) {
        std::fprintf(stderr, "http-bench: serve, round %d of %d\n", round, options.rounds);
        for (std::size_t i = 0; i < targets.size(); ++i) {
            // The server is otherwise idle here: its CPU time over the batch is what the GETs
            // cost it (/proc's clock ticks are 10 ms: a batch of many GETs averages them out).
            const double cpu0 = cpu_seconds(targets[i].pid);
            for (int n = 0; n < per_round; ++n) {
                const double t0 = now_s();
                connections[i]->get(targets[i].path);
                targets[i].ms.push_back((now_s() - t0) * 1000);
            }
            targets[i].cpu_s += cpu_seconds(targets[i].pid) - cpu0;
            targets[i].gets += per_round;
        }
    }
    connections.clear();
    bus_clients.stop(2);
    nats_clients.stop(2);
    busd.stop();
    nats.stop();
    if (!options.server.keep)
        remove_tree(dir);
    return targets;
}

// --- the report -------------------------------------------------------------------------------

void print_load(const Options& options) {
    if (!median_of("idle|delivered"))
        return;
    std::printf("1. pub -> sub, 64 B over unix://, one publisher, one subscriber, %.1f s per run "
                "(msgs/s, median of %d rounds)\n",
                options.seconds, options.rounds);
    bench::Table table({{"condition", bench::Align::left},
                        {"delivered/s"},
                        {"sent/s"},
                        {"loss"},
                        {"spread"},
                        {"vs idle"},
                        {"busd CPU us/msg"}});
    const auto idle = median_of("idle|delivered");
    for (const auto& c : conditions) {
        const auto delivered = median_of(c.name + "|delivered");
        if (!delivered)
            continue;
        table.add_row({c.name + ": " + c.label, bench::thousands(*delivered),
                       bench::thousands(*median_of(c.name + "|sent")),
                       bench::fixed(100 * *median_of(c.name + "|loss"), 2) + "%",
                       results[c.name + "|delivered"].spread(), bench::ratio_text(delivered, idle),
                       bench::fixed(*median_of(c.name + "|cpu_us"), 3)});
    }
    table.print(stdout);
    if (const auto scrapes = median_of("loaded|scrapes"))
        std::printf("per loaded run (median): %.0f scrapes of /metrics (%s bytes, p50 %.2f ms, "
                    "max %.2f ms as the scraper saw it), %.0f dashboard polls, %s bytes of "
                    "events\n",
                    *scrapes, bench::thousands(*median_of("loaded|metrics_bytes")).c_str(),
                    *median_of("loaded|scrape_p50_ms"), *median_of("loaded|scrape_max_ms"),
                    *median_of("loaded|polls"),
                    bench::thousands(*median_of("loaded|event_bytes")).c_str());
    std::printf("\n");
}

void print_serve(const Options& options, std::vector<Target>& targets) {
    if (targets.empty())
        return;
    std::printf("2. time to serve one GET, %d subjects and %d clients (busd: %d bus::Clients over "
                "unix://, 10 subscriptions each\n   on distinct subjects, one publish per subject "
                "so busd keeps statistics per subject; nats-server: %d connections\n   with the "
                "same subscriptions and publishes), %d GETs per path on one kept-alive "
                "connection,\n   alternating between the paths in %d rounds\n",
                subjects, clients, clients, clients, options.gets, options.rounds);
    bench::Table table({{"server", bench::Align::left},
                        {"path", bench::Align::left},
                        {"holds", bench::Align::left},
                        {"bytes"},
                        {"p50 ms"},
                        {"p99 ms"},
                        {"server CPU ms/GET"}});
    std::map<std::string, double> p50, cpu_ms;
    for (auto& t : targets) {
        const double median = bench::percentile(t.ms, 0.5), p99 = bench::percentile(t.ms, 0.99);
        p50[t.path] = median;
        cpu_ms[t.path] = t.gets ? t.cpu_s * 1000 / t.gets : 0;
        table.add_row({t.server, t.path, t.holds, bench::thousands(static_cast<double>(t.bytes)),
                       bench::fixed(median, 3), bench::fixed(p99, 3),
                       bench::fixed(cpu_ms[t.path], 3)});
    }
    table.print(stdout);
    // What case 1's load would cost busd at this size, by busd's own CPU: /metrics every 100 ms,
    // and the dashboard's stats and clients polls every second (its apps poll is the cluster's,
    // empty here).
    const double share =
        (10 * cpu_ms["/metrics"] + cpu_ms["/api/v1/stats"] + cpu_ms["/api/v1/clients"]) / 1000;
    std::printf("busd's CPU for Prometheus every 100 ms and the dashboard's polls at this size: "
                "%.2f%% of its core (rate kept >= %.3f)\n",
                100 * share, 1 - share);
    const double metrics = p50["/metrics"], subsz = p50["/subsz?subs=1"], connz = p50["/connz"];
    std::printf("p50 ratios: busd /metrics / nats /subsz?subs=1 = %s, / nats /connz = %s, "
                "/ (subsz + connz) = %s\n\n",
                bench::ratio_text(metrics, subsz).c_str(),
                bench::ratio_text(metrics, connz).c_str(),
                bench::ratio_text(metrics, subsz + connz).c_str());
}

} // namespace

int main(int argc, char** argv) {
    Options options;
    bench::OptionParser parser("http-bench", options);
    parser.add("--gets", "N", [&](std::string_view v) {
        options.gets = static_cast<int>(bench::to_integer(v, 1));
    });
    options.server.add_to(parser);
    parser.parse(argc, argv);
    options.server.resolve();

    Session session(
        "http-bench",
        static_cast<unsigned>(300 + options.rounds * conditions.size() * (options.seconds + 20)),
        options.server.keep);
    Paths paths;
    paths.busd = options.server.busd;
    paths.nats_server = find_program("nats-server");
    Runs runs(session.base());
    auto attempt = [&](const std::string& name, const std::function<void()>& body) {
        session.attempt(options, name, body);
    };

    for (int round = 0; round < options.rounds; ++round) {
        std::fprintf(stderr, "http-bench: load, round %d of %d\n", round + 1, options.rounds);
        for (std::size_t i = 0; i < conditions.size(); ++i) {
            const auto& c = conditions[(i + static_cast<std::size_t>(round)) % conditions.size()];
            attempt("load." + c.name, [&] { load_run(paths, runs, options, c); });
        }
    }
    std::vector<Target> targets;
    attempt("serve", [&] { targets = serve_case(paths, options, session.base()); });

    std::printf("http benchmark: busd's HTTP face (issue 18): what Prometheus and a dashboard "
                "cost the bus, and the time\nto serve /metrics beside nats-server's monitoring "
                "port; all local.\n\n");
    print_load(options);
    print_serve(options, targets);
    bench::print_ratio_bar(stdout, "http.pubsub64.loaded_vs_idle", median_of("loaded|delivered"),
                           median_of("idle|delivered"), "0.95");
    return session.finish();
}
