// busd's HTTP face, from outside: a real busd process with --http, real bus clients making the
// traffic, and plain TCP sockets speaking HTTP to it (so a test can also send what no HTTP
// library would: oversized heads, a request a byte at a time, a thousand idle connections).
// Where a figure is promised it is checked against what the test sent, and /metrics is checked
// by Prometheus's own promtool.
#include "../support/busd.hpp"
#include "../support/client.hpp"
#include "../support/temp_dir.hpp"
#include "../support/test_support.hpp"

#include "testonly/v1/sensor.pb.h"

#include <bus/client.hpp>
#include <bus/shm_queue.hpp>
#include <bus/v1/broker.pb.h>
#include <bus/v1/cluster.pb.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

using namespace std::chrono_literals;
using bus::test::connect_client;
using bus::test::flush;
using bus::test::run_until;
using json = nlohmann::json;

// --- HTTP over a plain socket ------------------------------------------------------------------

bus::UniqueFd connect_tcp(int port) {
    bus::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
        return {};
    return fd;
}

void send_all(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
        const auto n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n <= 0)
            return;
        bytes.remove_prefix(static_cast<std::size_t>(n));
    }
}

// Reads until the peer closes or `timeout` passes; true if it closed.
bool read_to_end(int fd, std::string& out, std::chrono::milliseconds timeout = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    char buffer[65536];
    while (std::chrono::steady_clock::now() < deadline) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 20) <= 0)
            continue;
        const auto n = ::recv(fd, buffer, sizeof buffer, 0);
        if (n <= 0)
            return true;
        out.append(buffer, static_cast<std::size_t>(n));
    }
    return false;
}

struct HttpResponse {
    int status = 0;
    std::string head, body;
    bool has_header(const std::string& line) const { return head.find(line) != std::string::npos; }
    json parsed() const { return json::parse(body); }
};

HttpResponse parse_response(const std::string& raw) {
    HttpResponse r;
    const auto end = raw.find("\r\n\r\n");
    r.head = raw.substr(0, end);
    if (end != std::string::npos)
        r.body = raw.substr(end + 4);
    if (raw.starts_with("HTTP/1.1 "))
        r.status = std::atoi(raw.c_str() + 9);
    return r;
}

HttpResponse request(int port, const std::string& method, const std::string& target,
                     const std::string& token = {}, const std::string& body = {}) {
    auto fd = connect_tcp(port);
    std::string text =
        method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
    if (!token.empty())
        text += "Authorization: Bearer " + token + "\r\n";
    if (!body.empty() || method == "POST")
        text += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                "\r\n";
    text += "\r\n" + body;
    send_all(fd.get(), text);
    std::string raw;
    read_to_end(fd.get(), raw);
    return parse_response(raw);
}

HttpResponse get(int port, const std::string& target, const std::string& token = {}) {
    return request(port, "GET", target, token);
}

// An open text/event-stream response, read an event at a time.
class EventReader {
public:
    EventReader(int port, const std::string& target, const std::string& token = {})
        : fd_(connect_tcp(port)) {
        std::string text = "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
        if (!token.empty())
            text += "Authorization: Bearer " + token + "\r\n";
        send_all(fd_.get(), text + "\r\n");
    }
    // The response's head, once it came.
    std::string head(std::chrono::milliseconds timeout = 5s) {
        fill_until("\r\n\r\n", timeout);
        const auto end = buffer_.find("\r\n\r\n");
        if (end == std::string::npos)
            return {};
        std::string h = buffer_.substr(0, end);
        buffer_.erase(0, end + 4);
        return h;
    }
    // The next event's data whose JSON satisfies `wanted`, within `timeout`.
    std::optional<json> next(const std::function<bool(const json&)>& wanted,
                             std::chrono::milliseconds timeout = 10s) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            if (!fill_until("\n\n", deadline - std::chrono::steady_clock::now()))
                return std::nullopt;
            const auto end = buffer_.find("\n\n");
            const std::string event = buffer_.substr(0, end);
            buffer_.erase(0, end + 2);
            if (!event.starts_with("data: "))
                continue; // a comment (keepalive, drops)
            auto parsed = json::parse(event.substr(6), nullptr, false);
            if (!parsed.is_discarded() && wanted(parsed))
                return parsed;
        }
        return std::nullopt;
    }

private:
    bool fill_until(const std::string& marker, std::chrono::nanoseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        char chunk[16384];
        while (buffer_.find(marker) == std::string::npos) {
            if (std::chrono::steady_clock::now() >= deadline)
                return false;
            pollfd p{fd_.get(), POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0)
                continue;
            const auto n = ::recv(fd_.get(), chunk, sizeof chunk, 0);
            if (n <= 0)
                return false;
            buffer_.append(chunk, static_cast<std::size_t>(n));
        }
        return true;
    }
    bus::UniqueFd fd_;
    std::string buffer_;
};

// One sample's value in Prometheus text, by its exact series ("name{a=\"x\"}"); -1 if absent.
double sample(const std::string& metrics, const std::string& series) {
    std::istringstream in(metrics);
    for (std::string line; std::getline(in, line);)
        if (line.starts_with(series + " "))
            return std::stod(line.substr(series.size() + 1));
    return -1;
}

std::size_t count_series(const std::string& metrics, const std::string& prefix) {
    std::istringstream in(metrics);
    std::size_t n = 0;
    for (std::string line; std::getline(in, line);)
        n += line.starts_with(prefix);
    return n;
}

// `promtool check metrics` on `text`: its exit code and what it said.
std::pair<int, std::string> promtool_check(const std::string& text, const std::string& dir) {
    const std::string file = dir + "/metrics.txt", said = dir + "/promtool.out";
    std::ofstream(file) << text;
    const int rc =
        std::system(("promtool check metrics < " + file + " > " + said + " 2>&1").c_str());
    std::ifstream in(said);
    std::stringstream s;
    s << in.rdbuf();
    return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, s.str()};
}

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

class HttpTest : public ::testing::Test {
protected:
    // busd with --http on a free loopback port, and `config` (TOML) if given.
    void start(const std::string& config = {}, std::vector<std::string> extra = {}) {
        extra.insert(extra.end(), {"--http", "127.0.0.1:0"});
        if (!config.empty()) {
            std::ofstream(config_dir_.path() + "/busd.toml") << config;
            extra.insert(extra.end(), {"-c", config_dir_.path() + "/busd.toml"});
        }
        busd_.emplace(io_, extra);
        probe_ = connect_client(io_, busd_->unix(), "http-test-probe");
        ASSERT_TRUE(probe_);
        auto stats = probe_->request_wait("$sys.stats", bus::v1::ClusterCommand(), 5s);
        ASSERT_TRUE(stats) << stats.error().message();
        bus::v1::BrokerStats s;
        ASSERT_EQ(stats.value().parse(s), std::error_code());
        url_ = s.http();
        ASSERT_TRUE(url_.starts_with("http://127.0.0.1:")) << url_;
        port_ = std::stoi(url_.substr(url_.rfind(':') + 1));
        token_ = read_file(busd_->dir() + "/http.token");
        while (!token_.empty() && token_.back() == '\n')
            token_.pop_back();
    }

    std::string app_config(int instances = 1) const {
        return "[broker]\nheartbeat_ms = 100\n[[app]]\nname = \"hello\"\ncommand = \"" +
               std::string(BUS_BIN_DIR) +
               "/bus-http-hello\"\ninstances = " + std::to_string(instances) +
               "\nlisten = [\"tcp://127.0.0.1:0\"]\n";
    }

    // The pids of app `name`'s workers in state `state` (any state if empty).
    std::set<std::uint32_t> worker_pids(const std::string& name,
                                        const std::string& state = "ready") {
        auto r = get(port_, "/api/v1/apps/" + name);
        std::set<std::uint32_t> pids;
        if (r.status != 200)
            return pids;
        const json apps = r.parsed();
        for (const auto& app : apps["apps"])
            for (const auto& w : app["workers"])
                if (state.empty() || w["state"] == state)
                    pids.insert(w["pid"].get<std::uint32_t>());
        return pids;
    }

    boost::asio::io_context io_;
    bus::test::TempDir config_dir_;
    std::optional<bus::test::Busd> busd_;
    std::shared_ptr<bus::Client> probe_;
    std::string url_, token_;
    int port_ = 0;
};

// --- /metrics ----------------------------------------------------------------------------------

TEST_F(HttpTest, MetricsAgreeWithTheTrafficSentAndPassPromtool) {
    ASSERT_NO_FATAL_FAILURE(start());
    auto sub = connect_client(io_, busd_->unix(), "metrics-sub");
    auto pub = connect_client(io_, busd_->ipc(), "metrics-pub");
    int received = 0;
    sub->subscribe("orders.*", [&](bus::Message&) { ++received; });
    flush(io_, sub);

    // Scrapes during the load see counts that only grow and never exceed what was sent.
    const std::string payload(100, 'x');
    double last_seen = 0;
    int sent = 0;
    for (int round = 0; round < 5; ++round) {
        for (int i = 0; i < 100; ++i, ++sent)
            pub->publish_bytes("orders.eu", payload);
        io_.restart();
        io_.poll();
        // No series before the subject's first publish.
        const double now =
            std::max(0.0, sample(get(port_, "/metrics").body,
                                 "bus_subject_messages_in_total{subject=\"orders.eu\"}"));
        EXPECT_GE(now, last_seen);
        EXPECT_LE(now, sent);
        last_seen = now;
    }
    for (int i = 0; i < 300; ++i)
        pub->publish_bytes("orders.us", payload);
    flush(io_, pub);
    ASSERT_TRUE(run_until(io_, [&] { return received == 800; })) << received;

    const std::string metrics = get(port_, "/metrics").body;
    EXPECT_EQ(sample(metrics, "bus_subject_messages_in_total{subject=\"orders.eu\"}"), 500);
    EXPECT_EQ(sample(metrics, "bus_subject_bytes_in_total{subject=\"orders.eu\"}"), 50000);
    EXPECT_EQ(sample(metrics, "bus_subject_messages_out_total{subject=\"orders.eu\"}"), 500);
    EXPECT_EQ(sample(metrics, "bus_subject_messages_in_total{subject=\"orders.us\"}"), 300);
    EXPECT_EQ(sample(metrics, "bus_subject_bytes_out_total{subject=\"orders.us\"}"), 30000);
    EXPECT_EQ(sample(metrics, "bus_subject_dropped_total{subject=\"orders.us\"}"), 0);
    EXPECT_EQ(sample(metrics, "bus_clients{transport=\"ipc\"}"), 1);
    EXPECT_EQ(sample(metrics, "bus_clients{transport=\"unix\"}"), 2); // and the probe
    // Its publishes, and its hello and flushes.
    EXPECT_GE(sample(metrics, "bus_client_messages_in_total{client=\"" + pub->id() +
                                  "\",name=\"metrics-pub\",transport=\"ipc\"}"),
              800);
    EXPECT_EQ(sample(metrics, "bus_client_bytes_out_total{client=\"" + sub->id() +
                                  "\",name=\"metrics-sub\",transport=\"unix\"}"),
              80000);
    EXPECT_EQ(sample(metrics, "bus_client_messages_out_total{client=\"" + sub->id() +
                                  "\",name=\"metrics-sub\",transport=\"unix\"}"),
              800);
    EXPECT_EQ(sample(metrics, "bus_client_dropped_total{client=\"" + sub->id() +
                                  "\",name=\"metrics-sub\",reason=\"queue_full\"}"),
              0);
    EXPECT_GT(sample(metrics, "process_resident_memory_bytes"), 0);
    EXPECT_GT(sample(metrics, "process_open_fds"), 0);

    // A shared-memory queue announced: figures read from its segment.
    const std::string queue = "bus-http-test-" + std::to_string(::getpid());
    struct Unlink {
        std::string name;
        ~Unlink() { bus::shm::remove(name, true); } // even when an assertion fails
    } unlink{queue};
    auto q = bus::shm::Queue::create(queue, 4096);
    ASSERT_TRUE(q) << q.error().message();
    for (int i = 0; i < 3; ++i)
        ASSERT_FALSE(q.value().try_push(bus::v1::Heartbeat()));
    pub->announce_queue(queue);
    flush(io_, pub);
    const std::string with_queue = get(port_, "/metrics").body;
    const std::string labels = "{queue=\"" + queue + "\",client=\"" + pub->id() + "\"}";
    EXPECT_EQ(sample(with_queue, "bus_shm_queue_depth_records" + labels), 3);
    EXPECT_EQ(sample(with_queue, "bus_shm_queue_produced_total" + labels), 3);
    EXPECT_EQ(sample(with_queue, "bus_shm_queue_consumed_total" + labels), 0);
    EXPECT_GE(sample(with_queue, "bus_shm_queue_capacity_bytes" + labels), 4096);

    const auto [rc, said] = promtool_check(with_queue, config_dir_.path());
    EXPECT_EQ(rc, 0) << "promtool check metrics (installed by scripts/setup.sh): " << said;
}

TEST_F(HttpTest, SubjectsPastTheLimitAreCountedTogether) {
    ASSERT_NO_FATAL_FAILURE(start("[limits]\nmax_tracked_subjects = 10\n"));
    auto sub = connect_client(io_, busd_->unix(), "all");
    int received = 0;
    sub->subscribe(">", [&](bus::Message&) { ++received; });
    flush(io_, sub);
    for (int i = 0; i < 50; ++i)
        probe_->publish_bytes("order." + std::to_string(i), "x");
    flush(io_, probe_);
    ASSERT_TRUE(run_until(io_, [&] { return received >= 50; }));
    // busd announces it on `$sys.client.connected`, routed now that someone subscribes.
    auto late = connect_client(io_, busd_->unix(), "late");
    flush(io_, late);

    const std::string metrics = get(port_, "/metrics").body;
    // 10 subjects of their own and "(other)", and busd's own events' subjects beside them.
    std::size_t own = 0;
    const json stats = get(port_, "/api/v1/stats").parsed();
    for (const auto& s : stats["subjects"])
        own += s["subject"].get<std::string>().starts_with("$sys.");
    EXPECT_GT(own, 0u);
    EXPECT_EQ(count_series(metrics, "bus_subject_messages_in_total{"), 11u + own);
    EXPECT_EQ(sample(metrics, "bus_subject_messages_in_total{subject=\"(other)\"}"), 40);
    // The first ten users' subjects, whatever busd's own $sys events took.
    EXPECT_EQ(sample(metrics, "bus_subject_messages_in_total{subject=\"order.0\"}"), 1);
    EXPECT_EQ(sample(metrics, "bus_subject_messages_in_total{subject=\"order.9\"}"), 1);
    EXPECT_EQ(get(port_, "/api/v1/stats").parsed()["subjects"].size(), 11u + own);
}

TEST_F(HttpTest, RequestOutcomesAndLatencyPerService) {
    ASSERT_NO_FATAL_FAILURE(start("[broker]\nheartbeat_ms = 100\n"));
    auto server = connect_client(io_, busd_->unix(), "echo-server");
    auto requester = connect_client(io_, busd_->unix(), "requester");
    std::vector<bus::Responder> held; // answered never, or when the server is gone
    server->serve("echo", [&](bus::Message& m, bus::Responder& r) {
        const std::string body(m.payload());
        if (body == "fail")
            r.fail("asked_to_fail", "asked to");
        else if (body == "hold")
            held.push_back(r);
        else
            r.reply_bytes(body);
    });
    flush(io_, server);

    std::map<std::string, int> outcomes;
    auto ask = [&](const std::string& body, std::chrono::milliseconds timeout) {
        requester->request_bytes("echo", body, timeout, [&](std::error_code ec, bus::Message&) {
            ++outcomes[ec ? std::string(bus::error_wire_name(static_cast<bus::errc>(ec.value())))
                          : "ok"];
        });
    };
    for (int i = 0; i < 5; ++i)
        ask("ping", 5s);
    ask("fail", 5s);
    ask("fail", 5s);
    ask("hold", 200ms); // never answered: busd counts a timeout once its deadline passed
    ASSERT_TRUE(run_until(io_, [&] { return outcomes["ok"] == 5 && outcomes.size() >= 3; }));
    ASSERT_TRUE(run_until(io_, [&] { return outcomes["timeout"] == 1; }));
    ask("hold", 10s); // held when the server goes: service_lost
    ASSERT_TRUE(run_until(io_, [&] { return held.size() == 2; }));
    held.clear();
    server->close();
    ASSERT_TRUE(run_until(io_, [&] { return outcomes["service_lost"] == 1; }));
    ask("ping", 5s); // nobody serves it now
    ASSERT_TRUE(run_until(io_, [&] { return outcomes["no_responders"] == 1; }));

    // busd's heartbeat (100 ms) sweeps the request past its deadline.
    std::string metrics;
    ASSERT_TRUE(run_until(io_, [&] {
        metrics = get(port_, "/metrics").body;
        return sample(metrics, "bus_requests_total{service=\"echo\",outcome=\"timeout\"}") == 1;
    })) << metrics;
    EXPECT_EQ(sample(metrics, "bus_requests_total{service=\"echo\",outcome=\"ok\"}"), 5);
    EXPECT_EQ(sample(metrics, "bus_requests_total{service=\"echo\",outcome=\"error\"}"), 2);
    EXPECT_EQ(sample(metrics, "bus_requests_total{service=\"echo\",outcome=\"service_lost\"}"), 1);
    EXPECT_EQ(sample(metrics, "bus_requests_total{service=\"echo\",outcome=\"no_responders\"}"), 1);
    EXPECT_EQ(sample(metrics, "bus_requests_total{service=\"echo\",outcome=\"expired\"}"), 0);
    // Answered requests are the histogram's observations.
    EXPECT_EQ(sample(metrics, "bus_request_duration_seconds_count{service=\"echo\"}"), 7);
    EXPECT_EQ(sample(metrics, "bus_request_duration_seconds_bucket{service=\"echo\",le=\"+Inf\"}"),
              7);
    EXPECT_GT(sample(metrics, "bus_request_duration_seconds_sum{service=\"echo\"}"), 0);
    EXPECT_LT(sample(metrics, "bus_request_duration_seconds_sum{service=\"echo\"}"), 7 * 5.0);
    EXPECT_EQ(sample(metrics, "bus_service_instances{service=\"echo\"}"), -1); // gone
    const auto [rc, said] = promtool_check(metrics, config_dir_.path());
    EXPECT_EQ(rc, 0) << said;
}

// --- the API -------------------------------------------------------------------------------------

TEST_F(HttpTest, ApiAnswersWhatSysAnswers) {
    ASSERT_NO_FATAL_FAILURE(start());
    auto c = connect_client(io_, busd_->unix(), "api-client");
    c->subscribe("sensors.>", [](bus::Message&) {});
    c->serve("sensors.read", [](bus::Message&, bus::Responder& r) { r.reply_bytes("ok"); });
    testonly::v1::Reading reading;
    reading.set_sensor("t1");
    c->publish("sensors.kitchen", reading); // registers testonly.v1.Reading with busd
    flush(io_, c);

    auto sys = probe_->request_wait("$sys.clients", bus::v1::ClusterCommand(), 5s);
    ASSERT_TRUE(sys);
    bus::v1::ClientList from_sys;
    ASSERT_EQ(sys.value().parse(from_sys), std::error_code());
    std::set<std::string> sys_ids, http_ids;
    for (const auto& client : from_sys.clients())
        sys_ids.insert(client.id());
    const auto clients = get(port_, "/api/v1/clients");
    ASSERT_EQ(clients.status, 200) << clients.body;
    EXPECT_TRUE(clients.has_header("Content-Type: application/json"));
    const json listed = clients.parsed();
    for (const auto& client : listed["clients"])
        http_ids.insert(client["id"]);
    EXPECT_EQ(http_ids, sys_ids);

    const auto subs = get(port_, "/api/v1/subscriptions").parsed();
    EXPECT_TRUE(std::any_of(
        subs["subscriptions"].begin(), subs["subscriptions"].end(),
        [&](const json& s) { return s["pattern"] == "sensors.>" && s["client_id"] == c->id(); }))
        << subs.dump();
    const auto services = get(port_, "/api/v1/services").parsed();
    ASSERT_EQ(services["services"].size(), 1u) << services.dump();
    EXPECT_EQ(services["services"][0]["name"], "sensors.read");
    EXPECT_EQ(services["services"][0]["instances"][0], c->id());
    const auto types = get(port_, "/api/v1/types").parsed();
    EXPECT_TRUE(std::any_of(types["types"].begin(), types["types"].end(), [](const json& t) {
        return t["name"] == "testonly.v1.Reading";
    })) << types.dump();
    const auto type = get(port_, "/api/v1/types/testonly.v1.Reading");
    ASSERT_EQ(type.status, 200);
    EXPECT_NE(type.body.find("\"Reading\""), std::string::npos);
    EXPECT_EQ(get(port_, "/api/v1/types/no.such.Type").status, 404);
    const auto stats = get(port_, "/api/v1/stats").parsed();
    EXPECT_EQ(stats["http"], url_);
    EXPECT_EQ(stats["clients"], 2);
    EXPECT_EQ(get(port_, "/api/v1/queues").parsed()["queues"].size(), 0u);
    EXPECT_EQ(get(port_, "/api/v1/apps").parsed()["apps"].size(), 0u);

    EXPECT_EQ(get(port_, "/api/v1/nothing").status, 404);
    const auto wrong_method = request(port_, "DELETE", "/api/v1/clients");
    EXPECT_EQ(wrong_method.status, 405);
    EXPECT_TRUE(wrong_method.has_header("Allow: GET"));
    // The page and its files are there, nothing else.
    const auto page = get(port_, "/");
    EXPECT_EQ(page.status, 200);
    EXPECT_TRUE(page.has_header("Content-Type: text/html"));
    EXPECT_TRUE(page.has_header("Content-Security-Policy: default-src 'self'"));
}

TEST_F(HttpTest, ChangesAndLogsNeedTheToken) {
    ASSERT_NO_FATAL_FAILURE(start(app_config()));
    struct stat st {};
    ASSERT_EQ(::stat((busd_->dir() + "/http.token").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    EXPECT_EQ(token_.size(), 64u) << token_; // 32 random bytes in hex
    EXPECT_TRUE(std::all_of(token_.begin(), token_.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
    })) << token_;

    std::set<std::uint32_t> before;
    ASSERT_TRUE(run_until(io_, [&] { return (before = worker_pids("hello")).size() == 1; }));

    for (const std::string& token : {std::string(), std::string(64, '0'), token_ + "0"}) {
        const auto refused = request(port_, "POST", "/api/v1/apps/hello/restart", token);
        EXPECT_EQ(refused.status, 401) << refused.body;
        EXPECT_TRUE(refused.has_header("WWW-Authenticate: Bearer"));
        EXPECT_EQ(refused.parsed()["error"], "unauthorized");
        EXPECT_EQ(get(port_, "/api/v1/apps/hello/logs", token).status, 401);
        EXPECT_EQ(get(port_, "/api/v1/auth", token).status, 401);
    }
    // Nothing changed: the same worker, never restarted.
    io_.restart();
    io_.run_for(500ms);
    EXPECT_EQ(worker_pids("hello", ""), before);
    EXPECT_EQ(get(port_, "/api/v1/apps/hello").parsed()["apps"][0]["restarts"], 0);

    EXPECT_EQ(get(port_, "/api/v1/auth", token_).status, 204);
    const auto restarted = request(port_, "POST", "/api/v1/apps/hello/restart", token_);
    EXPECT_EQ(restarted.status, 200) << restarted.body;
    EXPECT_EQ(restarted.parsed()["apps"][0]["name"], "hello");
    std::set<std::uint32_t> after;
    ASSERT_TRUE(run_until(io_, [&] {
        after = worker_pids("hello");
        return after.size() == 1 && after != before;
    }));

    const auto scaled =
        request(port_, "POST", "/api/v1/apps/hello/scale", token_, R"({"instances": 2})");
    EXPECT_EQ(scaled.status, 200) << scaled.body;
    ASSERT_TRUE(run_until(io_, [&] { return worker_pids("hello").size() == 2; }));
    EXPECT_EQ(request(port_, "POST", "/api/v1/apps/hello/scale", token_, "{not json").status, 400);
    EXPECT_EQ(request(port_, "POST", "/api/v1/apps/hello/scale", token_, "{}").status, 400);
    EXPECT_EQ(request(port_, "POST", "/api/v1/apps/nosuch/reload", token_).status, 400);
    EXPECT_EQ(request(port_, "POST", "/api/v1/apps/hello/explode", token_).status, 404);
    EXPECT_EQ(get(port_, "/api/v1/apps/hello/reload", token_).status, 405);

    const auto logs = get(port_, "/api/v1/apps/hello/logs?lines=5", token_);
    ASSERT_EQ(logs.status, 200) << logs.body;
    EXPECT_TRUE(logs.parsed()["path"].get<std::string>().ends_with("hello.log"));
    EXPECT_EQ(get(port_, "/api/v1/apps/hello/logs?lines=x", token_).status, 400);
}

TEST_F(HttpTest, AStuckWorkerShowsItsHeartbeatLagGrowing) {
    ASSERT_NO_FATAL_FAILURE(start(app_config() + "heartbeat_ms = 100\nheartbeat_misses = 100\n"));
    std::set<std::uint32_t> pids;
    ASSERT_TRUE(run_until(io_, [&] { return (pids = worker_pids("hello")).size() == 1; }));
    const auto pid = static_cast<pid_t>(*pids.begin());
    auto lag_ms = [&] {
        const json apps = get(port_, "/api/v1/apps/hello").parsed();
        return apps["apps"][0]["workers"][0]["heartbeat_lag_ms"].get<std::int64_t>();
    };
    EXPECT_LT(lag_ms(), 100); // answering: within a ping interval of on time
    ::kill(pid, SIGSTOP);
    struct Resume {
        pid_t pid;
        ~Resume() { ::kill(pid, SIGCONT); } // even when an assertion fails
    } resume{pid};
    ASSERT_TRUE(bus::test::wait_until([&] { return lag_ms() >= 800; }, 5s));
    ::kill(pid, SIGCONT);
    ASSERT_TRUE(bus::test::wait_until([&] { return lag_ms() < 100; }, 5s));
    EXPECT_EQ(worker_pids("hello"), pids); // not cut off: it answered in time
}

// --- server-sent events --------------------------------------------------------------------------

TEST_F(HttpTest, EventsFollowClientsWorkersAndSlowConsumers) {
    ASSERT_NO_FATAL_FAILURE(start(app_config() + "[limits]\nclient_queue_bytes = 65536\n"));
    std::set<std::uint32_t> pids;
    ASSERT_TRUE(run_until(io_, [&] { return (pids = worker_pids("hello")).size() == 1; }));
    EventReader events(port_, "/events");
    const auto head = events.head();
    EXPECT_NE(head.find("Content-Type: text/event-stream"), std::string::npos) << head;

    auto c = connect_client(io_, busd_->unix(), "evt-client");
    auto connected = events.next([](const json& e) {
        return e["subject"] == "$sys.client.connected" && e["event"]["name"] == "evt-client";
    });
    ASSERT_TRUE(connected);
    EXPECT_EQ((*connected)["event"]["transport"], "unix");

    // A worker killed: its exit, then its replacement.
    const auto victim = *pids.begin();
    ::kill(static_cast<pid_t>(victim), SIGKILL);
    auto exited = events.next([&](const json& e) {
        return e["subject"] == "$sys.cluster.worker.exited" &&
               e["event"]["worker"]["pid"] == victim;
    });
    ASSERT_TRUE(exited);
    EXPECT_EQ((*exited)["event"]["app"], "hello");
    EXPECT_EQ((*exited)["event"]["signal"], SIGKILL);
    auto started =
        events.next([](const json& e) { return e["subject"] == "$sys.cluster.worker.started"; });
    ASSERT_TRUE(started);
    EXPECT_NE((*started)["event"]["worker"]["pid"], victim);

    // The app's and its worker's series, once the new worker is ready.
    const auto pid = std::to_string((*started)["event"]["worker"]["pid"].get<std::uint32_t>());
    const std::string worker = "{app=\"hello\",instance=\"0\",pid=\"" + pid + "\"";
    std::string metrics;
    ASSERT_TRUE(bus::test::wait_until([&] {
        metrics = get(port_, "/metrics").body;
        return sample(metrics, "bus_worker_info" + worker + ",state=\"ready\"}") == 1;
    })) << metrics;
    EXPECT_EQ(sample(metrics, "bus_app_restarts_total{app=\"hello\"}"), 1);
    EXPECT_EQ(sample(metrics, "bus_app_instances{app=\"hello\"}"), 1);
    EXPECT_EQ(sample(metrics, "bus_app_info{app=\"hello\",state=\"running\",mode=\"round_robin\"}"),
              1);
    EXPECT_GT(sample(metrics, "bus_worker_resident_memory_bytes" + worker + "}"), 0);
    EXPECT_GE(sample(metrics, "bus_worker_uptime_seconds" + worker + "}"), 0);
    EXPECT_GE(sample(metrics, "bus_worker_heartbeat_lag_seconds" + worker + "}"), 0);
    EXPECT_LT(sample(metrics, "bus_worker_heartbeat_lag_seconds" + worker + "}"), 5);
    EXPECT_EQ(count_series(metrics, "bus_worker_info{"), 1u); // the killed one is gone
    const auto [rc, said] = promtool_check(metrics, config_dir_.path());
    EXPECT_EQ(rc, 0) << said;

    // A subscriber that stops reading (a stopped `bus sub`) is told as a slow consumer.
    auto stuck =
        bus::spawn(io_, {std::string(BUS_BIN_DIR) + "/bus", "-e", busd_->unix(), "sub", "flood"});
    ASSERT_TRUE(stuck);
    ASSERT_TRUE(events.next([](const json& e) {
        return e["subject"] == "$sys.client.connected" && e["event"]["name"] == "bus-sub";
    }));
    bus::test::wait_until([&] {
        auto subs = get(port_, "/api/v1/subscriptions").parsed();
        for (const auto& s : subs["subscriptions"])
            if (s["pattern"] == "flood")
                return true;
        return false;
    });
    stuck.value()->kill(SIGSTOP);
    const std::string kilobyte(1024, 'f');
    for (int i = 0; i < 4000; ++i) {
        c->publish_bytes("flood", kilobyte);
        if (i % 100 == 0) {
            io_.restart();
            io_.poll();
        }
    }
    flush(io_, c);
    auto slow = events.next([](const json& e) {
        return e["subject"] == "$sys.client.slow_consumer" && e["event"]["name"] == "bus-sub";
    });
    stuck.value()->kill(SIGKILL);
    ASSERT_TRUE(slow);
    EXPECT_GT(std::stoull((*slow)["event"]["dropped"].get<std::string>()), 0u);
}

TEST_F(HttpTest, InspectorShowsMessagesDecodedThroughTheRegistry) {
    ASSERT_NO_FATAL_FAILURE(start());
    EXPECT_EQ(get(port_, "/api/v1/inspect?subject=sensors.%3E").status, 401);
    EXPECT_EQ(get(port_, "/api/v1/inspect?subject=sensors..x", token_).status, 400);
    EXPECT_EQ(get(port_, "/api/v1/inspect", token_).status, 400);

    EventReader inspect(port_, "/api/v1/inspect?subject=sensors.%3E", token_);
    EXPECT_NE(inspect.head().find("200 OK"), std::string::npos);
    // Said once busd has the subscription: what is published from now on shows.
    ASSERT_TRUE(inspect.next([](const json& e) { return e["subscribed"] == "sensors.>"; }));
    const auto clients = get(port_, "/api/v1/clients").parsed();
    EXPECT_TRUE(std::any_of(clients["clients"].begin(), clients["clients"].end(),
                            [](const json& c) {
                                return c["name"] == "busd-http-inspector" &&
                                       c["subscriptions"] == 1;
                            }))
        << clients.dump();

    auto c = connect_client(io_, busd_->unix(), "sensor");
    testonly::v1::Reading reading;
    reading.set_sensor("kitchen-1");
    reading.set_celsius(21.5);
    reading.mutable_place()->set_room("kitchen");
    c->publish("sensors.kitchen", reading, {{"trace", "abc"}});
    c->publish_bytes("sensors.raw", std::string("\x00\xff\x10", 3));
    flush(io_, c);

    auto typed = inspect.next([](const json& m) { return m["subject"] == "sensors.kitchen"; });
    ASSERT_TRUE(typed);
    EXPECT_EQ((*typed)["type"], "testonly.v1.Reading");
    EXPECT_EQ((*typed)["source"], c->id());
    EXPECT_EQ((*typed)["headers"]["trace"], "abc");
    EXPECT_EQ((*typed)["payload"]["sensor"], "kitchen-1");
    EXPECT_EQ((*typed)["payload"]["celsius"], 21.5);
    EXPECT_EQ((*typed)["payload"]["place"]["room"], "kitchen");
    auto raw = inspect.next([](const json& m) { return m["subject"] == "sensors.raw"; });
    ASSERT_TRUE(raw);
    EXPECT_TRUE((*raw)["payload"].is_null());
    EXPECT_EQ((*raw)["payload_base64"], "AP8Q");
}

// --- bad input -----------------------------------------------------------------------------------

TEST_F(HttpTest, BadRequestsAreRefusedClearly) {
    ASSERT_NO_FATAL_FAILURE(start());
    {
        auto fd = connect_tcp(port_);
        send_all(fd.get(),
                 "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(16384, 'a') + "\r\n\r\n");
        std::string raw;
        read_to_end(fd.get(), raw);
        EXPECT_EQ(parse_response(raw).status, 431) << raw.substr(0, 200);
    }
    {
        const auto big =
            request(port_, "POST", "/api/v1/apps/x/scale", token_, std::string(100 * 1024, '{'));
        EXPECT_EQ(big.status, 413);
    }
    {
        auto fd = connect_tcp(port_);
        send_all(fd.get(), "NOT HTTP AT ALL\r\n\r\n");
        std::string raw;
        read_to_end(fd.get(), raw);
        EXPECT_EQ(parse_response(raw).status, 400) << raw;
    }
    // Paths name compiled-in files only: nothing on disk is reachable.
    for (const char* path :
         {"/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/app.js/../../../etc/passwd",
          "//etc/passwd", "/index.html%00", "/..%2f..%2fetc%2fpasswd"}) {
        const auto r = get(port_, path);
        EXPECT_EQ(r.status, 404) << path;
        EXPECT_EQ(r.body.find("root:"), std::string::npos) << path;
    }
}

TEST_F(HttpTest, SlowAndIdleConnectionsAreBoundedAndRoutingGoesOn) {
    ASSERT_NO_FATAL_FAILURE(start("[http]\nmax_connections = 32\nrequest_timeout_ms = 500\n"));
    rlimit limit{};
    ::getrlimit(RLIMIT_NOFILE, &limit);
    limit.rlim_cur = std::max<rlim_t>(limit.rlim_cur, std::min<rlim_t>(limit.rlim_max, 4096));
    ::setrlimit(RLIMIT_NOFILE, &limit);

    // Slowloris: a head a byte at a time never completes; busd cuts it off.
    {
        auto fd = connect_tcp(port_);
        const auto started = std::chrono::steady_clock::now();
        send_all(fd.get(), "GET / HTTP/1.1\r\nHost: x\r\n");
        std::string raw;
        bool closed = false;
        for (int i = 0; i < 100 && !closed; ++i) {
            send_all(fd.get(), "X");
            closed = read_to_end(fd.get(), raw, 100ms);
        }
        EXPECT_TRUE(closed) << "busd still holds a connection that sends its head byte by byte";
        EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
        if (!raw.empty()) {
            EXPECT_EQ(parse_response(raw).status, 408);
        }
    }

    // 1,000 idle connections: 32 are held (until their time is up), the rest refused at once.
    auto sub = connect_client(io_, busd_->unix(), "router-check");
    int got = 0;
    sub->subscribe("still.routing", [&](bus::Message&) { ++got; });
    flush(io_, sub);
    std::vector<bus::UniqueFd> idle;
    for (int i = 0; i < 1000; ++i) {
        idle.push_back(connect_tcp(port_));
        ASSERT_TRUE(idle.back()) << i;
    }
    int refused = 0;
    for (auto& fd : idle) {
        std::string raw;
        if (read_to_end(fd.get(), raw, 2ms) && parse_response(raw).status == 503 &&
            raw.find("too_many_connections") != std::string::npos)
            ++refused;
    }
    EXPECT_GE(refused, 1000 - 32 - 5); // those busd had not accepted yet wait in the backlog
    // Routing does not notice.
    probe_->publish_bytes("still.routing", "1");
    ASSERT_TRUE(run_until(io_, [&] { return got == 1; }));
    idle.clear();
    // Once the held ones time out, the face serves again and says what it refused.
    std::string metrics;
    ASSERT_TRUE(bus::test::wait_until(
        [&] {
            auto r = get(port_, "/metrics");
            metrics = r.body;
            return r.status == 200;
        },
        5s));
    EXPECT_GE(sample(metrics, "bus_http_refused_connections_total"), refused);
    probe_->publish_bytes("still.routing", "2");
    ASSERT_TRUE(run_until(io_, [&] { return got == 2; }));
}

// --- configuration -------------------------------------------------------------------------------

TEST_F(HttpTest, StatusShowsTheFaceAndBadSettingsAreRefused) {
    ASSERT_NO_FATAL_FAILURE(start());
    const std::string out = config_dir_.path() + "/status.out";
    const int rc = std::system(
        (std::string(BUS_BIN_DIR) + "/bus -e " + busd_->unix() + " status > " + out + " 2>&1")
            .c_str());
    EXPECT_EQ(WEXITSTATUS(rc), 0);
    EXPECT_NE(read_file(out).find("http:        " + url_), std::string::npos) << read_file(out);

    // The token file goes with busd.
    busd_->stop();
    EXPECT_FALSE(std::filesystem::exists(busd_->dir() + "/http.token"));

    const std::string dir = config_dir_.path();
    auto busd_says = [&](const std::string& args) {
        const int code = std::system((std::string(BUS_BIN_DIR) + "/busd -e unix://" + dir +
                                      "/x.sock " + args + " > " + dir + "/busd.out 2>&1")
                                         .c_str());
        return std::make_pair(WEXITSTATUS(code), read_file(dir + "/busd.out"));
    };
    auto [code, said] = busd_says("--http nonsense");
    EXPECT_EQ(code, 1);
    EXPECT_NE(said.find("not ADDR:PORT"), std::string::npos) << said;
    std::ofstream(dir + "/bad.toml") << "[http]\nlisten = \"127.0.0.1:0\"\nport = 9\n";
    std::tie(code, said) = busd_says("-c " + dir + "/bad.toml");
    EXPECT_EQ(code, 2);
    EXPECT_NE(said.find("key 'http.port'"), std::string::npos) << said;
    std::ofstream(dir + "/bad2.toml") << "[http]\nmax_connections = 0\n";
    std::tie(code, said) = busd_says("-c " + dir + "/bad2.toml");
    EXPECT_EQ(code, 2);
    EXPECT_NE(said.find("key 'http.max_connections'"), std::string::npos) << said;
}

} // namespace

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    std::signal(SIGPIPE, SIG_IGN);
    return RUN_ALL_TESTS();
}
