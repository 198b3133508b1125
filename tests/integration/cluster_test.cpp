// Cluster mode with real processes: a real busd with [[app]] configs, its workers
// (bus-http-hello, or this binary re-run as a misbehaving worker with `--worker MODE`), and
// real TCP connections on 127.0.0.1.
//
// busd's stderr goes to a log file the tests read to know when something happened (a worker
// ready, replaced, an app errored). Every busd is stopped by its fixture, and its workers with
// it (SIGKILL on a busd leaves no orphan either: that is one of the tests).
#include "../support/temp_dir.hpp"
#include "../support/test_support.hpp"

#include <bus/child_process.hpp>
#include <bus/client.hpp>
#include <bus/cluster.hpp>
#include <bus/v1/broker.pb.h>
#include <bus/v1/cluster.pb.h>

#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <arpa/inet.h>
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <future>
#include <map>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <set>
#include <sstream>
#include <sys/un.h>
#include <thread>

namespace {

using bus::test::run_until;
using bus::test::TempDir;
using namespace std::chrono_literals;

std::string self_exe;
const std::string busd_bin = std::string(BUS_BIN_DIR) + "/busd";
const std::string hello_bin = std::string(BUS_BIN_DIR) + "/bus-http-hello";

// --- the misbehaving worker (this binary, --worker MODE) -------------------------------------

// Misbehaves once per test: the first process to create the marker file does it; the
// instances started after it behave (so a replaced worker serves).
bool first_time() {
    const char* marker = std::getenv("TEST_MARKER");
    if (!marker)
        return false;
    const int fd = ::open(marker, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0)
        return false;
    ::close(fd);
    return true;
}

// Connections being served, and whether to exit when none is left (drained).
int open_connections = 0;
bool draining = false;

void connection_closed() {
    if (--open_connections == 0 && draining)
        std::exit(0);
}

// Answers one request per connection with X-Instance / X-Pid, then closes.
void serve_once(boost::asio::io_context& io, bus::cluster::Connection c) {
    auto socket = std::make_shared<boost::asio::ip::tcp::socket>(io);
    socket->assign(boost::asio::ip::tcp::v4(), c.fd.release());
    auto buffer = std::make_shared<std::string>();
    auto chunk = std::make_shared<std::array<char, 4096>>();
    auto read = std::make_shared<std::function<void()>>();
    ++open_connections;
    *read = [socket, buffer, chunk, read] {
        socket->async_read_some(
            boost::asio::buffer(*chunk),
            [socket, buffer, chunk, read](boost::system::error_code ec, std::size_t n) {
                if (ec) {
                    *read = nullptr;
                    return connection_closed();
                }
                buffer->append(chunk->data(), n);
                if (buffer->find("\r\n\r\n") == std::string::npos)
                    return (*read)();
                auto out = std::make_shared<std::string>(
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\nX-Instance: " +
                    std::string(std::getenv("BUS_INSTANCE")) +
                    "\r\nX-Pid: " + std::to_string(::getpid()) + "\r\n\r\nok");
                boost::asio::async_write(*socket, boost::asio::buffer(*out),
                                         [socket, out](boost::system::error_code, std::size_t) {
                                             boost::system::error_code ignored;
                                             socket->close(ignored);
                                             connection_closed();
                                         });
                *read = nullptr; // break the cycle
            });
    };
    (*read)();
}

int worker_main(const std::string& mode) {
    boost::asio::io_context io;
    const bool instance0 = std::string(std::getenv("BUS_INSTANCE")) == "0";
    // Before the Worker takes it: the raw channel, for writing garbage on it.
    const int raw = ::dup(std::atoi(std::getenv("BUS_CHANNEL_FD")));
    if (mode == "crash")
        return 1; // before ready, every time
    const bool misbehave = instance0 && first_time();
    if (misbehave && (mode == "never-ack" || mode == "bogus-ack" || mode == "flood")) {
        // Speaks the protocol by hand: ready, heartbeats answered, but never acks the
        // connections it gets (or acks one it was not given, or floods its channel).
        auto channel = bus::Channel::from_parent(io).value();
        std::vector<bus::UniqueFd> kept;
        auto send = [&](const google::protobuf::Message& m) {
            bus::v1::Envelope e;
            e.set_kind(bus::v1::KIND_CONTROL);
            e.set_type_url("type.googleapis.com/" + m.GetDescriptor()->full_name());
            m.SerializeToString(e.mutable_payload());
            channel->send(e);
        };
        channel->on_message([&](bus::Message& m) {
            bus::v1::Heartbeat beat;
            bus::v1::NewConn conn;
            if (!m.parse(beat) && m.envelope().type_url().ends_with("Heartbeat")) {
                send(beat);
            } else if (!m.parse(conn) && m.envelope().type_url().ends_with("NewConn")) {
                for (auto& fd : m.fds)
                    kept.push_back(std::move(fd));
                if (mode == "flood") {
                    bus::v1::Load load;
                    for (int i = 0; i < 100000; ++i) {
                        load.set_connections(static_cast<std::uint32_t>(i));
                        send(load);
                    }
                }
                if (mode == "bogus-ack") {
                    bus::v1::NewConnAck ack;
                    ack.set_id(conn.id() + 1000);
                    ack.set_accepted(true);
                    send(ack);
                }
            }
        });
        channel->on_disconnect([&](std::error_code) { io.stop(); });
        bus::v1::Ready ready;
        ready.set_pid(static_cast<std::uint32_t>(::getpid()));
        send(ready);
        io.run();
        return 0;
    }
    // client: on the bus through the link busd gives each worker (no endpoint needed),
    // answering web.whoami with its pid.
    std::shared_ptr<bus::Client> client;
    if (mode == "client") {
        ::unsetenv("BUS_ENDPOINT");
        auto c = bus::Client::from_parent(io);
        if (!c)
            return 4;
        client = c.value();
        client->serve("web.whoami", [](bus::Message&, bus::Responder& r) {
            bus::v1::Ready me;
            me.set_pid(static_cast<std::uint32_t>(::getpid()));
            r.reply(me);
        });
    }
    std::vector<char> fat;
    if (misbehave && mode == "fat")
        fat.assign(std::size_t{512} << 20, 1); // 512 MiB, touched
    auto worker = bus::cluster::Worker::from_parent(io);
    if (!worker)
        return 2;
    worker.value()->on_connection([&, w = worker.value().get()](bus::cluster::Connection c) {
        if (misbehave && mode == "exit-before-ack")
            std::_Exit(3);
        if (misbehave && mode == "garbage") {
            const char junk[] = "\xff\xff\xff\x7fnot a frame at all";
            (void)!::write(raw, junk, sizeof junk);
            return; // and drops the connection (closes its copy): busd still has one
        }
        if (misbehave && mode == "replace-me")
            w->request_replacement("test asks");
        if (misbehave && mode == "stuck") {
            for (;;)
                std::this_thread::sleep_for(1s); // a loop that never comes back
        }
        if (mode == "chatty") { // a line on each stream per connection
            std::printf("served %s on instance %s\n", c.peer_address.c_str(),
                        std::getenv("BUS_INSTANCE"));
            std::fflush(stdout);
            std::fprintf(stderr, "bad byte \xff here\n");
        }
        serve_once(io, std::move(c));
    });
    if (mode == "chatty") {
        std::printf("starting instance %s\n", std::getenv("BUS_INSTANCE"));
        std::fflush(stdout);
    }
    worker.value()->on_shutdown([](std::chrono::milliseconds) {
        draining = true;
        if (open_connections == 0)
            std::exit(0);
    });
    // ready-on-file: says ready only once the file TEST_READY exists.
    boost::asio::steady_timer timer(io);
    std::function<void()> poll = [&] {
        if (std::filesystem::exists(std::getenv("TEST_READY")))
            return worker.value()->ready();
        timer.expires_after(20ms);
        timer.async_wait([&](boost::system::error_code ec) {
            if (!ec)
                poll();
        });
    };
    if (mode == "ready-on-file") {
        poll();
    } else {
        worker.value()->ready();
    }
    io.run();
    return 0;
}

// --- the test side ---------------------------------------------------------------------------

struct Response {
    int status = 0;
    std::map<std::string, std::string> headers;
    std::string body;
    int instance() const { return std::stoi(headers.at("X-Instance")); }
    pid_t pid() const { return std::stoi(headers.at("X-Pid")); }
};

// Parses one response from the front of `in` (Content-Length bodies); erases it.
std::optional<Response> parse_response(std::string& in) {
    const auto end = in.find("\r\n\r\n");
    if (end == std::string::npos)
        return std::nullopt;
    Response r;
    std::istringstream head(in.substr(0, end));
    std::string line;
    std::getline(head, line);
    if (line.rfind("HTTP/1.1 ", 0) != 0)
        return std::nullopt;
    r.status = std::stoi(line.substr(9, 3));
    std::size_t length = 0;
    while (std::getline(head, line)) {
        if (!line.empty() && line.back() == '\r')
            line.pop_back();
        const auto colon = line.find(':');
        if (colon == std::string::npos)
            continue;
        r.headers[line.substr(0, colon)] = line.substr(colon + 2);
        if (line.substr(0, colon) == "Content-Length")
            length = std::stoul(line.substr(colon + 2));
    }
    if (in.size() < end + 4 + length)
        return std::nullopt;
    r.body = in.substr(end + 4, length);
    in.erase(0, end + 4 + length);
    return r;
}

// A blocking HTTP client connection (10 s socket timeouts, so no test can hang on it).
class HttpConnection {
public:
    explicit HttpConnection(int port) : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
        timeval tv{10, 0};
        ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ::setsockopt(fd_.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(static_cast<std::uint16_t>(port));
        connected_ = ::connect(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    }
    bool connected() const { return connected_; }
    // One request; nullopt if the connection failed or closed before a whole response.
    std::optional<Response> get(bool keep_alive) {
        const std::string request = std::string("GET / HTTP/1.1\r\nHost: test\r\n") +
                                    (keep_alive ? "" : "Connection: close\r\n") + "\r\n";
        if (!connected_ || ::send(fd_.get(), request.data(), request.size(), MSG_NOSIGNAL) !=
                               static_cast<ssize_t>(request.size()))
            return std::nullopt;
        for (;;) {
            if (auto r = parse_response(in_))
                return r;
            char buf[4096];
            const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
            if (n <= 0)
                return std::nullopt;
            in_.append(buf, static_cast<std::size_t>(n));
        }
    }

private:
    bus::UniqueFd fd_;
    bool connected_ = false;
    std::string in_;
};

std::optional<Response> http_get(int port) {
    HttpConnection c(port);
    return c.get(false);
}

std::size_t count(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
        ++n;
    return n;
}

bool process_gone(pid_t pid) {
    if (::kill(pid, 0) < 0 && errno == ESRCH)
        return true;
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), {});
    const auto paren = text.rfind(')');
    return paren != std::string::npos && paren + 2 < text.size() && text[paren + 2] == 'Z';
}

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    return std::string((std::istreambuf_iterator<char>(in)), {});
}

// A program (run in /) whose stdout is read here as it comes. Every read is bounded, so a program
// that never prints what is awaited fails the test instead of hanging it; destroying it
// kills the program if it still runs.
class PipedCommand {
public:
    PipedCommand(boost::asio::io_context& io, const std::vector<std::string>& argv) : io_(io) {
        int fds[2];
        EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0);
        out_.reset(fds[0]);
        bus::UniqueFd write_end(fds[1]);
        bus::SpawnOptions options;
        options.cwd = "/";
        options.stdout_fd = write_end.get();
        auto p = bus::spawn(io_, argv, options);
        EXPECT_TRUE(p) << p.error().message();
        if (p) {
            process_ = std::move(p).value();
            process_->on_exit([this](int code, int) { exit_ = code; });
        }
    } // our copy of the write end closes here: the read end ends when the program's does
    // Reads until what it printed holds `lines` lines, or `timeout` passes.
    bool read_lines(std::size_t lines, std::chrono::milliseconds timeout = 20s) {
        return read_until([&] { return count(output_, "\n") >= lines; }, timeout);
    }
    // Reads to the end of its output and waits for it to exit: its exit code, nullopt if that
    // takes longer than `timeout`.
    std::optional<int> finish(std::chrono::milliseconds timeout = 20s) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        read_until([] { return false; }, timeout);
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        run_until(
            io_, [&] { return exit_.has_value(); }, std::max(left, 0ms));
        return exit_;
    }
    const std::string& output() const { return output_; }

private:
    // Reads until `done()`, the end of the output, or `timeout`; returns done().
    bool read_until(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (!done() && !ended_) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            pollfd p{out_.get(), POLLIN, 0};
            if (left <= 0ms || ::poll(&p, 1, static_cast<int>(left.count())) <= 0)
                break;
            char buf[4096];
            const ssize_t n = ::read(out_.get(), buf, sizeof buf);
            if (n <= 0)
                ended_ = true;
            else
                output_.append(buf, static_cast<std::size_t>(n));
        }
        return done();
    }

    boost::asio::io_context& io_;
    bus::UniqueFd out_;
    std::shared_ptr<bus::ChildProcess> process_;
    std::optional<int> exit_;
    std::string output_;
    bool ended_ = false;
};

// A busd running one app; stderr in DIR/busd.log, its apps' logs in DIR/logs.
class Busd {
public:
    Busd(boost::asio::io_context& io, const std::string& app_toml) : io_(io), dir_(tmp_.path()) {
        std::ofstream(dir_ + "/busd.toml") << app_toml;
        start();
    }
    ~Busd() {
        stop(SIGTERM);
        // Whatever happened, no worker outlives the test.
        for (pid_t pid : worker_pids())
            if (!process_gone(pid))
                ::kill(pid, SIGKILL);
    }
    void start() {
        const std::string command = "exec " + busd_bin + " -e unix://" + dir_ + "/busd.sock -c " +
                                    dir_ + "/busd.toml --apps-log-dir " + dir_ + "/logs 2>>" +
                                    dir_ + "/busd.log";
        auto p = bus::spawn(io_, {"/bin/sh", "-c", command});
        ASSERT_TRUE(p) << p.error().message();
        process_ = std::move(p).value();
        process_->on_exit([this](int code, int) { exit_ = code; });
    }
    void stop(int signal) {
        if (process_ && process_->running()) {
            process_->kill(signal);
            run_until(
                io_, [&] { return exit_.has_value(); }, 30s);
        }
    }
    std::string log() const { return read_file(dir_ + "/busd.log"); }
    // Waits until `what` appears `n` times in the log.
    bool wait_log(const std::string& what, std::size_t n = 1,
                  std::chrono::milliseconds timeout = 20s) {
        return run_until(
            io_, [&] { return count(log(), what) >= n; }, timeout);
    }
    // The port busd bound for `app` (listen on port 0) the `nth` time it started it: busd logs
    // "app 'APP' listening on tcp://127.0.0.1:PORT" with the address as bound. 0 if it never
    // said so (the caller's assertion shows the log).
    int listening_port(const std::string& app, std::size_t nth = 1) {
        const std::string said = "app '" + app + "' listening on tcp://127.0.0.1:";
        if (!wait_log(said, nth))
            return 0;
        const std::string text = log();
        auto at = text.find(said);
        for (std::size_t i = 1; i < nth; ++i)
            at = text.find(said, at + 1);
        return std::atoi(text.c_str() + at + said.size());
    }
    // Every worker pid the log mentions.
    std::set<pid_t> worker_pids() const {
        std::set<pid_t> pids;
        const std::string text = log();
        for (auto at = text.find("(pid "); at != std::string::npos;
             at = text.find("(pid ", at + 1)) {
            const pid_t pid = std::atoi(text.c_str() + at + 5);
            if (process_ && pid != process_->pid())
                pids.insert(pid);
        }
        return pids;
    }
    std::optional<int> exit_code() const { return exit_; }
    pid_t pid() const { return process_->pid(); }
    const std::string& dir() const { return dir_; }

private:
    boost::asio::io_context& io_;
    TempDir tmp_; // removed once busd and its workers are gone
    std::string dir_;
    std::shared_ptr<bus::ChildProcess> process_;
    std::optional<int> exit_;
};

// PORT 0 lets busd pick (the fixtures read back what it took); reuseport needs a fixed one.
std::string app_config(const std::string& command, const std::vector<std::string>& args, int port,
                       int instances, const std::string& extra = "") {
    std::string toml = "[[app]]\nname = \"web\"\ncommand = \"" + command + "\"\nargs = [";
    for (std::size_t i = 0; i < args.size(); ++i)
        toml += (i ? ", \"" : "\"") + args[i] + "\"";
    toml += "]\ninstances = " + std::to_string(instances) +
            "\nlisten = [\"tcp://127.0.0.1:" + std::to_string(port) + "\"]\n" + extra;
    return toml;
}

class ClusterTest : public ::testing::Test {
protected:
    // busd with app 'web' (app_config), and port_ the port it listens on: the one the test
    // chose, or (port_ 0) the one busd bound.
    void launch(const std::string& toml) {
        busd_ = std::make_unique<Busd>(io_, toml);
        if (port_ == 0) {
            port_ = busd_->listening_port("web");
            ASSERT_NE(port_, 0) << "busd never said where app 'web' listens\n" << busd_->log();
        }
    }
    // ... and `ready` workers ready.
    void start(const std::string& toml, std::size_t ready = 2) {
        launch(toml);
        ASSERT_TRUE(busd_->wait_log(") ready", ready)) << busd_->log();
    }
    void TearDown() override { busd_.reset(); }
    // A file for a worker to create (first_time()) or wait for, and its siblings (marker() +
    // ".ready", ".conf"), in the test's own directory: gone with it, even when the test fails
    // half-way.
    std::string marker() const { return (files_ / "marker"); }
    // busd with one worker that exits at once, every time: errored after `max_restarts` exits
    // `delay` apart.
    void start_crashing(int max_restarts, std::chrono::milliseconds delay) {
        launch(app_config(self_exe, {"--worker", "crash"}, port_, 1,
                          "max_restarts = " + std::to_string(max_restarts) +
                              "\nmin_uptime_ms = 5000\nrestart_delay_ms = " +
                              std::to_string(delay.count()) + "\n"));
    }

    boost::asio::io_context io_;
    int port_ = 0; // busd picks
    const TempDir files_;
    std::unique_ptr<Busd> busd_;
};

TEST_F(ClusterTest, RoundRobinSpreadsConnectionsOverWorkers) {
    start(app_config(hello_bin, {}, port_, 2));
    std::vector<int> instances;
    for (int i = 0; i < 8; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r);
        EXPECT_EQ(r->status, 200);
        EXPECT_EQ(r->body, "Hello, world!\n");
        instances.push_back(r->instance());
    }
    // Alternating: each connection goes to the other worker.
    for (std::size_t i = 1; i < instances.size(); ++i)
        EXPECT_NE(instances[i], instances[i - 1]) << "connection " << i;
}

TEST_F(ClusterTest, KeepAliveConnectionStaysWithItsWorker) {
    start(app_config(hello_bin, {}, port_, 2));
    HttpConnection c(port_);
    std::set<pid_t> pids;
    for (int i = 0; i < 5; ++i) {
        auto r = c.get(true);
        ASSERT_TRUE(r);
        EXPECT_EQ(r->headers.count("Connection"), 0u);
        pids.insert(r->pid());
    }
    EXPECT_EQ(pids.size(), 1u);
}

// The workers accept themselves: on busd's socket (shared), or each on its own (reuseport).
TEST_F(ClusterTest, SharedModeWorkersAcceptOnBusdsSocket) {
    start(app_config(hello_bin, {}, port_, 2, "mode = \"shared\"\n"));
    ASSERT_TRUE(busd_->wait_log("accepting on tcp://127.0.0.1:" + std::to_string(port_), 2))
        << busd_->log();
    for (int i = 0; i < 20; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r) << "connection " << i;
        EXPECT_EQ(r->status, 200);
    }
}

TEST_F(ClusterTest, ReuseportModeWorkersBindTheirOwnSockets) {
    const bus::test::ReservedPort reserved; // "reuseport needs a fixed port"
    port_ = reserved.port();
    start(app_config(hello_bin, {}, port_, 2, "mode = \"reuseport\"\n"));
    ASSERT_TRUE(busd_->wait_log("accepting on tcp://127.0.0.1:" + std::to_string(port_), 2))
        << busd_->log();
    std::set<int> instances;
    for (int i = 0; i < 40; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r) << "connection " << i;
        instances.insert(r->instance());
    }
    // The kernel spreads them by a hash of the addresses: 40 all on one side would be 2^-39.
    EXPECT_EQ(instances, (std::set<int>{0, 1}));
}

TEST_F(ClusterTest, KilledWorkerIsRestarted) {
    start(app_config(hello_bin, {}, port_, 2));
    auto first = http_get(port_);
    ASSERT_TRUE(first);
    const int instance = first->instance();
    ASSERT_EQ(::kill(first->pid(), SIGKILL), 0);
    ASSERT_TRUE(busd_->wait_log("killed by signal 9"));
    ASSERT_TRUE(busd_->wait_log(") ready", 3)) << busd_->log();
    // Both instances serve again, the killed one with a new process.
    std::map<int, pid_t> seen;
    for (int i = 0; i < 4; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r);
        seen[r->instance()] = r->pid();
    }
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_NE(seen[instance], first->pid());
}

// The worker a connection is sent to exits before acknowledging it: the connection goes to
// the other worker (Node's primary would leak it: nodejs/node#21746).
TEST_F(ClusterTest, WorkerDyingBeforeAckDoesNotLoseTheConnection) {
    start(app_config(self_exe, {"--worker", "exit-before-ack"}, port_, 2,
                     "env = { TEST_MARKER = \"" + marker() + "\" }\n"));
    std::vector<Response> answers;
    for (int i = 0; i < 4; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r) << "connection " << i << " got no answer\n" << busd_->log();
        answers.push_back(*r);
    }
    EXPECT_TRUE(busd_->wait_log("exited with code 3")) << busd_->log();
    EXPECT_TRUE(std::filesystem::exists(marker()));
}

TEST_F(ClusterTest, WorkerSendingGarbageIsCutOffAndReplaced) {
    start(app_config(self_exe, {"--worker", "garbage"}, port_, 2,
                     "env = { TEST_MARKER = \"" + marker() + "\" }\n"));
    for (int i = 0; i < 4; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r) << "connection " << i << " got no answer\n" << busd_->log();
    }
    EXPECT_TRUE(busd_->wait_log("cut off: its channel failed")) << busd_->log();
    ASSERT_TRUE(busd_->wait_log(") ready", 3)) << busd_->log();
    std::set<int> instances;
    for (int i = 0; i < 4; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r);
        instances.insert(r->instance());
    }
    EXPECT_EQ(instances, (std::set<int>{0, 1}));
}

TEST_F(ClusterTest, StuckWorkerMissesHeartbeatsAndIsReplaced) {
    start(app_config(self_exe, {"--worker", "stuck"}, port_, 2,
                     "env = { TEST_MARKER = \"" + marker() +
                         "\" }\nheartbeat_ms = 100\nheartbeat_misses = 3\n"));
    // The stuck worker's connection is answered by the other one once it is cut off.
    for (int i = 0; i < 4; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r) << "connection " << i << " got no answer\n" << busd_->log();
    }
    EXPECT_TRUE(busd_->wait_log("heartbeats unanswered")) << busd_->log();
    EXPECT_TRUE(busd_->wait_log(") ready", 3)) << busd_->log();
}

TEST_F(ClusterTest, WorkerThatNeverAcksIsCutOffAndItsConnectionServedElsewhere) {
    start(app_config(self_exe, {"--worker", "never-ack"}, port_, 2,
                     "env = { TEST_MARKER = \"" + marker() + "\" }\nack_timeout_ms = 500\n" +
                         "heartbeat_ms = 50\nheartbeat_misses = 1000\n"));
    for (int i = 0; i < 4; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r) << "connection " << i << " got no answer\n" << busd_->log();
    }
    EXPECT_TRUE(busd_->wait_log("did not acknowledge a connection within ack_timeout"))
        << busd_->log();
}

TEST_F(ClusterTest, WorkerFloodingItsChannelIsCutOff) {
    start(app_config(self_exe, {"--worker", "flood"}, port_, 2,
                     "env = { TEST_MARKER = \"" + marker() + "\" }\n"));
    for (int i = 0; i < 4; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r) << "connection " << i << " got no answer\n" << busd_->log();
    }
    EXPECT_TRUE(busd_->wait_log("floods its channel")) << busd_->log();
    EXPECT_TRUE(busd_->wait_log(") ready", 3)) << busd_->log();
}

TEST_F(ClusterTest, WorkerAckingAConnectionItWasNotGivenIsCutOff) {
    start(app_config(self_exe, {"--worker", "bogus-ack"}, port_, 2,
                     "env = { TEST_MARKER = \"" + marker() + "\" }\n"));
    for (int i = 0; i < 4; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r) << "connection " << i << " got no answer\n" << busd_->log();
    }
    EXPECT_TRUE(busd_->wait_log("which it was not given")) << busd_->log();
}

TEST_F(ClusterTest, WorkerAskingForReplacementIsReplacedNewOneFirst) {
    start(app_config(self_exe, {"--worker", "replace-me"}, port_, 2,
                     "env = { TEST_MARKER = \"" + marker() + "\" }\n"));
    for (int i = 0; i < 2; ++i)
        ASSERT_TRUE(http_get(port_)) << busd_->log();
    ASSERT_TRUE(busd_->wait_log("shutting down (replaced)")) << busd_->log();
    const std::string log = busd_->log();
    // The new worker was ready before the old one was told to go.
    EXPECT_LT(log.find("asks to be replaced: test asks"),
              log.find(") ready", log.find("replacing worker 0")));
    EXPECT_LT(log.find(") ready", log.find("replacing worker 0")),
              log.find("shutting down (replaced)"));
}

TEST_F(ClusterTest, StopExitCodeIsNotRestarted) {
    launch(app_config(self_exe, {"--worker", "crash"}, port_, 1, "stop_exit_codes = [1]\n"));
    ASSERT_TRUE(busd_->wait_log("stop exit code: not restarted")) << busd_->log();
    EXPECT_EQ(count(busd_->log(), ") started"), 1u);
}

// The fat worker touches its 512 MiB before it says ready: seconds on a loaded machine, so it
// gets a listen_timeout that is not what is under test.
TEST_F(ClusterTest, WorkerAboveMaxMemoryIsReplacedGracefully) {
    start(app_config(self_exe, {"--worker", "fat"}, port_, 2,
                     "env = { TEST_MARKER = \"" + marker() +
                         "\" }\nmax_memory_mb = 256\nheartbeat_ms = 50\nheartbeat_misses = 1000\n" +
                         "listen_timeout_ms = 60000\n"));
    ASSERT_TRUE(busd_->wait_log("above max_memory: replacing it")) << busd_->log();
    ASSERT_TRUE(busd_->wait_log("shutting down (replaced)")) << busd_->log();
    const std::string log = busd_->log();
    // Replaced new worker first: ready before the old one was told to go, and only once.
    EXPECT_LT(log.find(") ready", log.find("replacing worker 0")),
              log.find("shutting down (replaced)"));
    for (int i = 0; i < 4; ++i)
        ASSERT_TRUE(http_get(port_)) << busd_->log();
    EXPECT_EQ(count(busd_->log(), "above max_memory"), 1u) << busd_->log();
}

// Saves the way editors do: a new file renamed over the old one (no moment with half a file).
void save(const std::string& path, const std::string& content) {
    std::ofstream(path + ".tmp") << content;
    std::filesystem::rename(path + ".tmp", path);
}

// A save without a change reloads nothing; a burst of saves with a change reloads once.
TEST_F(ClusterTest, WatchedFileChangeReloadsOnce) {
    const std::string watched = marker() + ".conf";
    std::ofstream(watched) << "version 1\n";
    start(app_config(hello_bin, {}, port_, 2,
                     "watch = [\"" + watched + "\"]\nwatch_debounce_ms = 100\n"));
    const auto old_pids = busd_->worker_pids();
    for (int i = 0; i < 3; ++i)
        save(watched, "version 1\n");
    ASSERT_TRUE(busd_->wait_log("watched files unchanged")) << busd_->log();
    EXPECT_EQ(count(busd_->log(), "reload queued"), 0u);
    for (int i = 0; i < 3; ++i)
        save(watched, "version 2\n");
    ASSERT_TRUE(busd_->wait_log("shutting down (replaced)", 2)) << busd_->log();
    const std::string log = busd_->log();
    EXPECT_EQ(count(log, "watched files changed"), 1u) << log;
    EXPECT_EQ(count(log, "reload queued"), 1u) << log;
    for (int i = 0; i < 4; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r);
        EXPECT_EQ(old_pids.count(r->pid()), 0u);
    }
}

TEST_F(ClusterTest, CrashLoopingAppBecomesErrored) {
    start_crashing(3, 10ms);
    ASSERT_TRUE(busd_->wait_log("errored")) << busd_->log();
    const std::string log = busd_->log();
    EXPECT_NE(log.find("app 'web' errored: worker 0 exited 3 times in a row"), std::string::npos)
        << log;
    // Started once and restarted twice: three exits, then left stopped.
    EXPECT_EQ(count(log, "exited with code 1"), 3u) << log;
    EXPECT_EQ(count(log, ") started"), 3u) << log;
    // An errored app no longer takes connections: refused, not left hanging.
    EXPECT_FALSE(http_get(port_));
}

class ReloadTest : public ClusterTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(ReloadTest, UnderLoadLosesNoRequest) {
    start(app_config(hello_bin, {}, port_, 2, "mode = \"" + GetParam() + "\"\n"));
    const auto old_pids = busd_->worker_pids();
    std::atomic<bool> done{false};
    std::atomic<int> ok{0}, failed{0};
    std::vector<std::thread> clients;
    for (int t = 0; t < 3; ++t)
        clients.emplace_back([&] { // a new connection per request
            while (!done) {
                if (auto r = http_get(port_); r && r->status == 200)
                    ++ok;
                else
                    ++failed;
            }
        });
    clients.emplace_back([&] { // keep-alive, reconnecting when told to close
        while (!done) {
            HttpConnection c(port_);
            for (;;) {
                auto r = c.get(true);
                if (!r || r->status != 200) {
                    ++failed;
                    break;
                }
                ++ok;
                if (r->headers.count("Connection") || done)
                    break;
            }
        }
    });
    // Two reloads: the second, asked for while the first runs, is queued behind it.
    ASSERT_TRUE(run_until(io_, [&] { return ok > 50; }));
    ::kill(busd_->pid(), SIGHUP);
    const bool reloaded = busd_->wait_log("replacing worker 0") &&
                          ::kill(busd_->pid(), SIGHUP) == 0 &&
                          busd_->wait_log("shutting down (replaced)", 4, 60s) &&
                          run_until(
                              io_,
                              [&] {
                                  for (pid_t pid : old_pids)
                                      if (!process_gone(pid))
                                          return false;
                                  return true;
                              },
                              20s);
    const int before = ok;
    run_until(io_, [&] { return ok > before + 50; });
    done = true;
    for (auto& t : clients)
        t.join();
    ASSERT_TRUE(reloaded) << busd_->log();
    EXPECT_EQ(failed, 0) << "of " << ok + failed << "\n" << busd_->log();
    EXPECT_EQ(count(busd_->log(), "reload queued"), 2u);
    std::printf("reload under load: %d requests answered, %d failed\n", ok.load(), failed.load());
    // Served by new workers only now.
    for (int i = 0; i < 4; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r);
        EXPECT_EQ(old_pids.count(r->pid()), 0u);
    }
}

// Not reuseport: a worker closing its own SO_REUSEPORT socket resets the connections still in
// its accept queue, unless net.ipv4.tcp_migrate_req = 1 (docs/cluster.md).
INSTANTIATE_TEST_SUITE_P(Modes, ReloadTest,
                         ::testing::Values("round_robin", "least_connections", "shared"));

TEST_F(ClusterTest, SigtermStopsEveryWorker) {
    start(app_config(hello_bin, {}, port_, 2));
    const auto pids = busd_->worker_pids();
    ASSERT_EQ(pids.size(), 2u);
    busd_->stop(SIGTERM);
    ASSERT_TRUE(busd_->exit_code().has_value());
    EXPECT_EQ(*busd_->exit_code(), 0);
    // busd reaped them before exiting.
    for (pid_t pid : pids)
        EXPECT_TRUE(process_gone(pid)) << pid;
    EXPECT_EQ(count(busd_->log(), "exited with code 0"), 2u) << busd_->log();
}

TEST_F(ClusterTest, KilledBusdLeavesNoOrphans) {
    start(app_config(hello_bin, {}, port_, 2));
    const auto pids = busd_->worker_pids();
    ASSERT_EQ(pids.size(), 2u);
    busd_->stop(SIGKILL);
    for (pid_t pid : pids)
        EXPECT_TRUE(run_until(io_, [&] { return process_gone(pid); })) << pid;
}

// $sys.cluster.* requests through busd's own bus: what `bus cluster ...` will send.
class ClusterControlTest : public ClusterTest {
protected:
    bus::Result<bus::v1::ClusterList> control(const std::string& op, const std::string& app = {},
                                              std::uint32_t instances = 0) {
        if (!client_) {
            auto c = bus::Client::connect(io_, "unix://" + busd_->dir() + "/busd.sock");
            EXPECT_TRUE(c) << c.error().message();
            if (!c)
                return c.error();
            client_ = c.value();
        }
        bus::v1::ClusterCommand command;
        command.set_app(app);
        command.set_instances(instances);
        auto reply = client_->request_wait("$sys.cluster." + op, command, 10s);
        if (!reply)
            return reply.error();
        return reply.value().as<bus::v1::ClusterList>();
    }
    // Waits until the app's state and worker count are as given.
    bool wait_for(const std::string& state, std::size_t workers) {
        return run_until(
            io_,
            [&] {
                auto ls = control("ls");
                return ls && ls.value().apps_size() == 1 && ls.value().apps(0).state() == state &&
                       static_cast<std::size_t>(ls.value().apps(0).workers_size()) == workers;
            },
            20s);
    }
    // Runs `bus -e ENDPOINT ARGS` (a real process) in /; its exit code and what it printed.
    std::pair<int, std::string> bus_cli(const std::string& args) {
        return bus_cli_raw(std::string(BUS_CLI) + " -e unix://" + busd_->dir() + "/busd.sock " +
                           args + " 2>&1");
    }
    // Runs a shell command in /; its exit code and what it printed on stdout.
    static std::pair<int, std::string> bus_cli_raw(const std::string& shell) {
        const std::string command = "cd / && " + shell;
        std::string out;
        FILE* p = ::popen(command.c_str(), "r");
        char buf[4096];
        for (std::size_t n; p && (n = std::fread(buf, 1, sizeof buf, p)) > 0;)
            out.append(buf, n);
        const int status = p ? ::pclose(p) : -1;
        return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
    }
    // The app named `name` in `ls`, if busd has one.
    std::optional<bus::v1::ClusterApp> app(const std::string& name) {
        auto ls = control("ls");
        if (ls)
            for (const auto& a : ls.value().apps())
                if (a.name() == name)
                    return a;
        return std::nullopt;
    }
    void TearDown() override {
        client_.reset();
        ClusterTest::TearDown();
    }
    std::shared_ptr<bus::Client> client_;
};

TEST_F(ClusterControlTest, LsShowsTheAppAndItsWorkers) {
    start(app_config(hello_bin, {}, port_, 2));
    auto ls = control("ls");
    ASSERT_TRUE(ls) << ls.error().message();
    ASSERT_EQ(ls.value().apps_size(), 1);
    const auto& app = ls.value().apps(0);
    EXPECT_EQ(app.name(), "web");
    EXPECT_EQ(app.state(), "running");
    EXPECT_EQ(app.mode(), "round_robin");
    EXPECT_EQ(app.instances(), 2u);
    ASSERT_EQ(app.listening_size(), 1);
    EXPECT_EQ(app.listening(0), "tcp://127.0.0.1:" + std::to_string(port_));
    ASSERT_EQ(app.workers_size(), 2);
    std::set<std::uint32_t> instances;
    for (const auto& w : app.workers()) {
        EXPECT_EQ(w.state(), "ready");
        EXPECT_GT(w.pid(), 0u);
        EXPECT_GT(w.rss_bytes(), 0u);
        EXPECT_GT(w.started_unix_ns(), 0);
        instances.insert(w.instance());
    }
    EXPECT_EQ(instances, (std::set<std::uint32_t>{0, 1}));
}

TEST_F(ClusterControlTest, ScaleUpAndDown) {
    start(app_config(hello_bin, {}, port_, 2));
    ASSERT_TRUE(control("scale", "web", 3));
    ASSERT_TRUE(wait_for("running", 3));
    ASSERT_TRUE(busd_->wait_log(") ready", 3)) << busd_->log();
    std::set<int> instances;
    for (int i = 0; i < 6; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r);
        instances.insert(r->instance());
    }
    EXPECT_EQ(instances, (std::set<int>{0, 1, 2}));

    ASSERT_TRUE(control("scale", "web", 1));
    ASSERT_TRUE(wait_for("running", 1)) << busd_->log();
    EXPECT_EQ(count(busd_->log(), "shutting down (scaled down)"), 2u);
    for (int i = 0; i < 3; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r);
        EXPECT_EQ(r->instance(), 0);
    }
}

// `bus cluster` as a person runs it: the same control from the command line.
TEST_F(ClusterControlTest, BusClusterCommandListsScalesStopsAndNamesWhatIsWrong) {
    start(app_config(hello_bin, {}, port_, 2));
    auto [code, out] = bus_cli("cluster ls --json");
    ASSERT_EQ(code, 0) << out;
    bus::v1::ClusterApp app;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(out, &app).ok()) << out;
    EXPECT_EQ(app.name(), "web");
    EXPECT_EQ(app.state(), "running");
    EXPECT_EQ(app.workers_size(), 2);

    std::tie(code, out) = bus_cli("cluster scale web 3");
    ASSERT_EQ(code, 0) << out;
    EXPECT_NE(out.find("web"), std::string::npos) << out;
    ASSERT_TRUE(wait_for("running", 3)) << busd_->log();
    std::tie(code, out) = bus_cli("cluster ls");
    ASSERT_EQ(code, 0) << out;
    EXPECT_EQ(out.rfind("APP\t", 0), 0u) << "a table, tab-separated when piped: " << out;

    std::tie(code, out) = bus_cli("cluster stop web");
    ASSERT_EQ(code, 0) << out;
    ASSERT_TRUE(wait_for("stopped", 0)) << busd_->log();

    std::tie(code, out) = bus_cli("cluster scale nosuch 2");
    EXPECT_NE(code, 0) << out;
    EXPECT_NE(out.find("nosuch"), std::string::npos) << out;
    std::tie(code, out) = bus_cli("cluster scale web 0");
    EXPECT_EQ(code, 2) << "a usage error: " << out;
}

TEST_F(ClusterControlTest, StopThenStartAgain) {
    start(app_config(hello_bin, {}, port_, 2));
    ASSERT_TRUE(control("stop", "web"));
    ASSERT_TRUE(wait_for("stopped", 0)) << busd_->log();
    EXPECT_FALSE(http_get(port_));
    ASSERT_TRUE(control("start", "web"));
    port_ = busd_->listening_port("web", 2); // bound again: port 0, another pick
    ASSERT_NE(port_, 0) << busd_->log();
    ASSERT_TRUE(busd_->wait_log(") ready", 4)) << busd_->log();
    auto r = http_get(port_);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
}

TEST_F(ClusterControlTest, RestartStartsAnErroredApp) {
    start_crashing(2, 10ms);
    ASSERT_TRUE(busd_->wait_log("errored")) << busd_->log();
    auto ls = control("ls");
    ASSERT_TRUE(ls);
    EXPECT_EQ(ls.value().apps(0).state(), "errored");
    EXPECT_NE(ls.value().apps(0).reason().find("exited 2 times in a row"), std::string::npos);
    // Started again, with its count reset: errored again after two more quick exits.
    ASSERT_TRUE(control("restart", "web"));
    ASSERT_TRUE(busd_->wait_log("errored", 2)) << busd_->log();
    EXPECT_EQ(count(busd_->log(), ") started"), 4u) << busd_->log();
}

TEST_F(ClusterControlTest, ReloadReplacesEveryWorker) {
    start(app_config(hello_bin, {}, port_, 2));
    const auto before = busd_->worker_pids();
    ASSERT_TRUE(control("reload", "web"));
    ASSERT_TRUE(busd_->wait_log("shutting down (replaced)", 2)) << busd_->log();
    for (int i = 0; i < 4; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r);
        EXPECT_EQ(before.count(r->pid()), 0u);
    }
}

// Held keep-alive connections count; a new connection goes to the worker with the fewest.
TEST_F(ClusterControlTest, LeastConnectionsSendsNewConnectionsToTheLeastLoadedWorker) {
    start(app_config(hello_bin, {}, port_, 2, "mode = \"least_connections\"\n"));
    std::vector<std::unique_ptr<HttpConnection>> held;
    std::map<int, std::vector<HttpConnection*>> by_instance;
    for (int i = 0; i < 4; ++i) {
        held.push_back(std::make_unique<HttpConnection>(port_));
        auto r = held.back()->get(true);
        ASSERT_TRUE(r);
        by_instance[r->instance()].push_back(held.back().get());
    }
    EXPECT_EQ(by_instance[0].size(), 2u);
    EXPECT_EQ(by_instance[1].size(), 2u);
    // Instance 0's connections close; once its report says so, the next two go to it.
    for (auto* c : by_instance[0])
        for (auto& h : held)
            if (h.get() == c)
                h.reset();
    ASSERT_TRUE(run_until(io_, [&] {
        auto ls = control("ls");
        if (!ls)
            return false;
        for (const auto& w : ls.value().apps(0).workers())
            if (w.instance() == 0 && w.connections() == 0)
                return true;
        return false;
    })) << busd_->log();
    std::vector<std::unique_ptr<HttpConnection>> more;
    for (int i = 0; i < 2; ++i) {
        more.push_back(std::make_unique<HttpConnection>(port_));
        auto r = more.back()->get(true);
        ASSERT_TRUE(r);
        EXPECT_EQ(r->instance(), 0) << "connection " << i;
    }
}

// No ready worker: accepted connections wait in busd's queue (max_pending), the rest in the
// kernel's backlog; all are answered once a worker is ready.
TEST_F(ClusterControlTest, ConnectionsWaitForAReadyWorker) {
    const std::string ready_file = marker() + ".ready";
    launch(app_config(self_exe, {"--worker", "ready-on-file"}, port_, 1,
                      "env = { TEST_READY = \"" + ready_file +
                          "\" }\nmax_pending = 2\nlisten_timeout_ms = 60000\n"));
    ASSERT_TRUE(busd_->wait_log(") started")) << busd_->log();
    std::vector<std::future<std::optional<Response>>> answers;
    for (int i = 0; i < 5; ++i)
        answers.push_back(std::async(std::launch::async, [&] { return http_get(port_); }));
    ASSERT_TRUE(run_until(io_, [&] {
        auto ls = control("ls");
        return ls && ls.value().apps(0).pending() == 2;
    })) << busd_->log();
    std::ofstream(ready_file).flush();
    for (auto& a : answers) {
        auto r = a.get();
        ASSERT_TRUE(r) << busd_->log();
        EXPECT_EQ(r->status, 200);
    }
}

TEST_F(ClusterControlTest, BadCommandsAreErrors) {
    start(app_config(hello_bin, {}, port_, 1), 1);
    auto unknown_op = control("explode", "web");
    ASSERT_FALSE(unknown_op);
    EXPECT_EQ(unknown_op.error(), bus::errc::no_responders);
    auto unknown_app = control("stop", "nope");
    ASSERT_FALSE(unknown_app);
    // busd answers "bad_request", which a Client reports as errc::bad_frame.
    EXPECT_EQ(unknown_app.error(), bus::errc::bad_frame);
    auto bad_scale = control("scale", "web", 0);
    ASSERT_FALSE(bad_scale);
    EXPECT_TRUE(wait_for("running", 1));
}

TEST(ClusterConfig, BadValuesAreRefusedNamingTheKey) {
    boost::asio::io_context io;
    struct Case {
        std::string toml;
        std::string message;
    };
    const std::vector<Case> cases = {
        {"[[app]]\nname = \"a\"\ncommand = \"x\"\ninstances = 0\n",
         "key 'app[0].instances': must be between 1 and 1024"},
        {"[[app]]\nname = \"a\"\ncommand = \"x\"\nlisten = [\"http://x\"]\n",
         "key 'app[0].listen': 'http://x' is not tcp://HOST:PORT"},
        {"[[app]]\nname = \"a\"\ncommand = \"x\"\nmode = \"random\"\n",
         "key 'app[0].mode': must be round_robin, least_connections, shared or reuseport"},
        {"[[app]]\nname = \"a\"\ncommand = \"x\"\nmode = \"reuseport\"\nlisten = "
         "[\"tcp://127.0.0.1:0\"]\n",
         "key 'app[0].listen': 'tcp://127.0.0.1:0': reuseport needs a fixed port"},
        {"[[app]]\nname = \"a\"\ncommand = \"x\"\nwatch = [\"/nonexistent/bus\"]\n",
         "key 'app[0].watch': '/nonexistent/bus' does not exist"},
        {"[[app]]\nname = \"a\"\ncommand = \"x\"\nmax_memory_mb = 0\n",
         "key 'app[0].max_memory_mb': must be between 1 and 1048576"},
        {"[[app]]\nname = \"a\"\ncommand = \"x\"\nrestarts = 3\n",
         "key 'app[0].restarts': unknown key"},
        {"[[app]]\nname = \"a\"\n", "key 'app[0].command'"},
        {"[[app]]\nname = \"a\"\ncommand = \"x\"\n[[app]]\nname = \"a\"\ncommand = \"y\"\n",
         "key 'app[1].name': 'a' names another app too"},
        {"[[app]]\nname = \"a\"\ncommand = \"x\"\nkill_timeout_ms = \"5s\"\n",
         "key 'app[0].kill_timeout_ms': must be an integer"},
    };
    for (const auto& c : cases) {
        Busd busd(io, c.toml);
        ASSERT_TRUE(run_until(
            io, [&] { return busd.exit_code().has_value(); }, 20s));
        EXPECT_EQ(*busd.exit_code(), 2) << c.toml;
        EXPECT_NE(busd.log().find(c.message), std::string::npos) << busd.log();
    }
}

} // namespace

int main(int argc, char** argv) {
    self_exe = std::filesystem::canonical("/proc/self/exe").string();
    if (argc == 3 && std::string_view(argv[1]) == "--worker")
        return worker_main(argv[2]);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}

namespace {

// `bus cluster start FILE` and the short form add apps to a running busd; relative paths in a
// file are the file's, in the short form the caller's; a taken name or a bad key is refused.
TEST_F(ClusterControlTest, StartAddsAppsFromAFileAndFromTheShortForm) {
    start(app_config(hello_bin, {}, port_, 1), 1);
    const std::string dir = busd_->dir();
    std::filesystem::create_directory(dir + "/app");
    std::filesystem::create_symlink(hello_bin, dir + "/app/hello");
    std::ofstream(dir + "/app/apps.toml")
        << "[[app]]\nname = \"fromfile\"\ncommand = \"./hello\"\ninstances = 2\n"
        << "listen = [\"tcp://127.0.0.1:0\"]\n";
    auto [code, out] = bus_cli("cluster start " + dir + "/app/apps.toml");
    ASSERT_EQ(code, 0) << out;
    EXPECT_NE(out.find("fromfile"), std::string::npos) << out;
    const int file_port = busd_->listening_port("fromfile");
    ASSERT_NE(file_port, 0) << busd_->log();
    ASSERT_TRUE(busd_->wait_log("app 'fromfile' worker 1 (pid", 1)) << busd_->log();
    ASSERT_TRUE(busd_->wait_log(") ready", 3)) << busd_->log();
    std::set<int> instances;
    for (int i = 0; i < 4; ++i) {
        auto r = http_get(file_port);
        ASSERT_TRUE(r) << busd_->log();
        instances.insert(r->instance());
    }
    EXPECT_EQ(instances, (std::set<int>{0, 1}));

    std::tie(code, out) =
        bus_cli("cluster start --name short -i 1 --mode least_connections --listen "
                "tcp://127.0.0.1:0 --cwd " +
                dir + "/app -- ./hello");
    ASSERT_EQ(code, 0) << out;
    const int short_port = busd_->listening_port("short");
    ASSERT_NE(short_port, 0) << busd_->log();
    ASSERT_TRUE(busd_->wait_log(") ready", 4)) << busd_->log();
    auto r = http_get(short_port);
    ASSERT_TRUE(r) << busd_->log();
    EXPECT_EQ(r->status, 200);
    auto added = app("short");
    ASSERT_TRUE(added);
    EXPECT_EQ(added->mode(), "least_connections");
    ASSERT_TRUE(app("web"));

    // A name taken: refused, and the running app untouched.
    std::tie(code, out) = bus_cli("cluster start --name web -- ./hello");
    EXPECT_NE(code, 0) << out;
    EXPECT_NE(out.find("'web' exists"), std::string::npos) << out;
    // A bad key: a usage error naming it, before busd is asked.
    std::ofstream(dir + "/bad.toml") << "[[app]]\nname = \"bad\"\ncommand = \"x\"\ninstances = 0\n";
    std::tie(code, out) = bus_cli("cluster start " + dir + "/bad.toml");
    EXPECT_EQ(code, 2) << out;
    EXPECT_NE(out.find("app[0].instances"), std::string::npos) << out;
    EXPECT_FALSE(app("bad"));
    // An address it cannot bind: refused, and the app not kept.
    std::tie(code, out) =
        bus_cli("cluster start --name clash --listen tcp://127.0.0.1:" + std::to_string(port_) +
                " -- ./hello");
    EXPECT_NE(code, 0) << out;
    EXPECT_NE(out.find("cannot listen"), std::string::npos) << out;
    EXPECT_FALSE(app("clash"));
    // Asked directly with a definition that is not TOML: a clear refusal.
    bus::v1::ClusterCommand command;
    command.set_config("[[app]\n");
    auto reply = client_->request_wait("$sys.cluster.start", command, 10s);
    ASSERT_FALSE(reply);
    EXPECT_TRUE(app("web"));
}

// `delete` stops the app gracefully and forgets it: its port is closed, its workers gone, and
// its name free for a new app.
TEST_F(ClusterControlTest, DeleteStopsTheAppAndForgetsIt) {
    start(app_config(hello_bin, {}, port_, 2));
    const auto pids = busd_->worker_pids();
    auto [code, out] = bus_cli("cluster delete web");
    ASSERT_EQ(code, 0) << out;
    ASSERT_TRUE(run_until(io_, [&] {
        auto ls = control("ls");
        return ls && ls.value().apps_size() == 0;
    })) << busd_->log();
    EXPECT_EQ(count(busd_->log(), "shutting down (stopping)"), 2u) << busd_->log();
    for (pid_t pid : pids)
        EXPECT_TRUE(run_until(io_, [&] { return process_gone(pid); })) << pid;
    EXPECT_FALSE(http_get(port_));
    std::tie(code, out) = bus_cli("cluster delete web");
    EXPECT_NE(code, 0) << out;
    EXPECT_NE(out.find("no app named 'web'"), std::string::npos) << out;

    std::tie(code, out) =
        bus_cli("cluster start --name web --listen tcp://127.0.0.1:0 -- " + hello_bin);
    ASSERT_EQ(code, 0) << out;
    port_ = busd_->listening_port("web", 2);
    ASSERT_NE(port_, 0) << busd_->log();
    ASSERT_TRUE(busd_->wait_log(") ready", 3)) << busd_->log();
    auto r = http_get(port_);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
}

// An app that becomes errored is announced on the bus, with the reason.
TEST_F(ClusterControlTest, ErroredAppIsAnnouncedOnTheBus) {
    start_crashing(3, 400ms);
    std::shared_ptr<bus::Client> watcher;
    ASSERT_TRUE(run_until(io_, [&] {
        auto c = bus::Client::connect(io_, "unix://" + busd_->dir() + "/busd.sock");
        if (c)
            watcher = c.value();
        return watcher != nullptr;
    }));
    std::optional<bus::v1::ClusterApp> event;
    std::string source;
    watcher->subscribe<bus::v1::ClusterApp>(
        "$sys.cluster.errored",
        [&](std::error_code ec, const bus::v1::ClusterApp& a, bus::Message& m) {
            ASSERT_FALSE(ec) << ec.message();
            event = a;
            source = m.envelope().source();
        });
    ASSERT_FALSE(busd_->log().find("errored") != std::string::npos)
        << "errored before the watcher subscribed: raise restart_delay_ms";
    ASSERT_TRUE(run_until(
        io_, [&] { return event.has_value(); }, 20s))
        << busd_->log();
    EXPECT_EQ(event->name(), "web");
    EXPECT_EQ(event->state(), "errored");
    EXPECT_NE(event->reason().find("exited 3 times in a row"), std::string::npos)
        << event->reason();
    EXPECT_EQ(source, "busd");
    watcher->close();
}

} // namespace

namespace {

// What workers write on stdout and stderr: kept in the app's log file, published on
// `$sys.log.APP`, and shown by `bus cluster logs` (the tail, then -f what follows).
TEST_F(ClusterControlTest, WorkerOutputIsLoggedPublishedAndShown) {
    start(app_config(self_exe, {"--worker", "chatty"}, port_, 2));
    ASSERT_TRUE(run_until(io_, [&] {
        return count(read_file(busd_->dir() + "/logs/web.log"), "starting instance") == 2;
    })) << read_file(busd_->dir() + "/logs/web.log");
    const std::string file = read_file(busd_->dir() + "/logs/web.log");
    EXPECT_NE(file.find(" web[0] "), std::string::npos) << file;
    EXPECT_NE(file.find(" web[1] "), std::string::npos) << file;
    EXPECT_NE(file.find(" out: starting instance 1"), std::string::npos) << file;

    // Published: one LogLine per line, with who wrote it.
    std::vector<bus::v1::LogLine> published;
    ASSERT_TRUE(control("ls")); // connects client_
    client_->subscribe<bus::v1::LogLine>(
        "$sys.log.web", [&](std::error_code ec, const bus::v1::LogLine& line, bus::Message&) {
            ASSERT_FALSE(ec);
            published.push_back(line);
        });
    ASSERT_TRUE(control("ls")); // the subscription is in place once this answer is back
    ASSERT_TRUE(http_get(port_));
    ASSERT_TRUE(run_until(io_, [&] { return published.size() >= 2; })) << busd_->log();
    const auto pids = busd_->worker_pids();
    std::set<std::string> streams;
    for (const auto& line : published) {
        EXPECT_EQ(line.app(), "web");
        EXPECT_TRUE(pids.count(static_cast<pid_t>(line.pid()))) << line.pid();
        EXPECT_GT(line.unix_ns(), 0);
        streams.insert(line.stream());
        if (line.stream() == "out") {
            EXPECT_EQ(line.text().rfind("served 127.0.0.1:", 0), 0u) << line.text();
            EXPECT_TRUE(line.text().ends_with(" on instance " + std::to_string(line.instance())))
                << line.text();
        } else {
            EXPECT_EQ(line.text(), "bad byte \xEF\xBF\xBD here") << "not UTF-8: replaced";
        }
    }
    EXPECT_EQ(streams, (std::set<std::string>{"out", "err"}));

    // The tail through busd, as `bus cluster logs` shows it.
    auto [code, out] = bus_cli("cluster logs web -n 50 --json");
    ASSERT_EQ(code, 0) << out;
    std::istringstream lines(out);
    int starting = 0, served = 0;
    for (std::string json; std::getline(lines, json);) {
        bus::v1::LogLine line;
        ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &line).ok()) << json;
        starting += line.text().rfind("starting instance", 0) == 0;
        served += line.text().rfind("served ", 0) == 0;
    }
    EXPECT_EQ(starting, 2) << out;
    EXPECT_EQ(served, 1) << out;
    std::tie(code, out) = bus_cli("cluster logs web -n 1");
    ASSERT_EQ(code, 0) << out;
    EXPECT_EQ(count(out, "\n"), 1u) << out;

    // -f: the tail, then lines written afterwards, each once. bus subscribes before it asks
    // for the tail, so once the tail is out, a line written now is one -f must show.
    PipedCommand follow(io_, {BUS_CLI, "-e", "unix://" + busd_->dir() + "/busd.sock", "cluster",
                              "logs", "web", "-f", "-n", "3", "--timeout", "3s"});
    ASSERT_TRUE(follow.read_lines(3)) << "the tail of 3 lines, within 20 s: " << follow.output();
    ASSERT_TRUE(http_get(port_));
    const auto exit_code = follow.finish();
    ASSERT_TRUE(exit_code) << "still running 20 s after its --timeout 3s: " << follow.output();
    EXPECT_EQ(*exit_code, 0) << follow.output();
    EXPECT_EQ(count(follow.output(), "served "), 2u)
        << "one from the tail, one new: " << follow.output();

    std::tie(code, out) = bus_cli("cluster logs nosuch");
    EXPECT_NE(code, 0);
    EXPECT_NE(out.find("no app named 'nosuch'"), std::string::npos) << out;
}

} // namespace

namespace {

TEST_F(ClusterControlTest, BashCompletionOffersClusterCommandsAndAppNames) {
    start(app_config(hello_bin, {}, port_, 1), 1);
    auto complete = [&](const std::string& words) {
        return bus_cli_raw("bash -c 'source \"$0\"; COMP_WORDS=(\"$@\"); "
                           "COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _bus; "
                           "printf \"%s\\n\" \"${COMPREPLY[@]}\"' " BUS_COMPLETION " " +
                           std::string(BUS_CLI) + " -e unix://" + busd_->dir() + "/busd.sock " +
                           words);
    };
    EXPECT_EQ(complete("cluster de").second, "delete\n");
    EXPECT_EQ(complete("cluster lo").second, "logs\n");
    EXPECT_EQ(complete("cluster logs w").second, "web\n");
    EXPECT_EQ(complete("cluster reload ''").second, "web\n");
    EXPECT_EQ(complete("cluster logs web --fo").second, "--follow\n");
}

} // namespace

namespace {

// A worker busd did not start joins a running app through busd's cluster socket: it gets
// connections like busd's own, is listed as joined, and is dropped, not restarted, when it dies.
TEST_F(ClusterControlTest, WorkerStartedElsewhereJoinsTheAppAndIsDroppedWhenItDies) {
    start(app_config(hello_bin, {}, port_, 1), 1);
    auto joined = bus::spawn(
        io_, {hello_bin, "--join", "web", "--endpoint", "unix://" + busd_->dir() + "/busd.sock"});
    ASSERT_TRUE(joined) << joined.error().message();
    const pid_t pid = joined.value()->pid();
    ASSERT_TRUE(busd_->wait_log("joined worker 1 (pid " + std::to_string(pid) + ") ready"))
        << busd_->log();
    std::set<int> instances;
    std::set<pid_t> pids;
    for (int i = 0; i < 6; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r);
        instances.insert(r->instance());
        pids.insert(r->pid());
    }
    EXPECT_EQ(instances, (std::set<int>{0, 1}));
    EXPECT_TRUE(pids.count(pid));
    auto listed = app("web");
    ASSERT_TRUE(listed);
    ASSERT_EQ(listed->workers_size(), 2);
    for (const auto& w : listed->workers())
        EXPECT_EQ(w.joined(), w.pid() == static_cast<std::uint32_t>(pid)) << w.pid();

    // Killed: busd sees it go (its pidfd), serves on with its own worker, starts nothing new.
    joined.value()->kill(SIGKILL);
    // Its connection ends (the kernel closes it) a moment before its pidfd says it exited:
    // busd notices whichever comes first.
    const std::string who = "joined worker 1 (pid " + std::to_string(pid) + ")";
    ASSERT_TRUE(run_until(io_, [&] {
        const auto log = busd_->log();
        return log.find(who + " left (its connection ended)") != std::string::npos ||
               log.find(who + " exited") != std::string::npos;
    })) << busd_->log();
    for (int i = 0; i < 6; ++i) {
        auto r = http_get(port_);
        ASSERT_TRUE(r) << "no connection may hang on the dead worker";
        EXPECT_EQ(r->instance(), 0);
    }
    listed = app("web");
    ASSERT_TRUE(listed);
    EXPECT_EQ(listed->workers_size(), 1);
    EXPECT_EQ(count(busd_->log(), ") started"), 1u) << "busd restarts only its own";
}

// Stopping the app (or busd) shuts a joined worker down like busd's own.
TEST_F(ClusterControlTest, JoinedWorkerIsShutDownWhenItsAppStops) {
    start(app_config(hello_bin, {}, port_, 1), 1);
    auto joined = bus::spawn(
        io_, {hello_bin, "--join", "web", "--endpoint", "unix://" + busd_->dir() + "/busd.sock"});
    ASSERT_TRUE(joined);
    std::optional<int> exit_code;
    joined.value()->on_exit([&](int code, int) { exit_code = code; });
    ASSERT_TRUE(busd_->wait_log("joined worker 1 (pid")) << busd_->log();
    ASSERT_TRUE(busd_->wait_log(") ready", 2)) << busd_->log();
    ASSERT_TRUE(control("stop", "web"));
    ASSERT_TRUE(run_until(
        io_, [&] { return exit_code.has_value(); }, 20s))
        << busd_->log();
    EXPECT_EQ(*exit_code, 0) << "drained and exited on Shutdown";
    ASSERT_TRUE(wait_for("stopped", 0)) << busd_->log();
}

// Refused: an app busd does not have, an app that is stopped, and a first message that is not
// Join (the connection is closed). busd's own workers are untouched.
TEST_F(ClusterControlTest, JoiningIsRefusedWithAReason) {
    start(app_config(hello_bin, {}, port_, 1), 1);
    auto join = [&](const std::string& app) {
        return bus_cli_raw(hello_bin + " --join " + app + " --endpoint unix://" + busd_->dir() +
                           "/busd.sock 2>&1");
    };
    auto [code, out] = join("nosuch");
    EXPECT_EQ(code, 2);
    EXPECT_NE(out.find("no app named 'nosuch'"), std::string::npos) << out;
    ASSERT_TRUE(control("stop", "web"));
    ASSERT_TRUE(wait_for("stopped", 0)) << busd_->log();
    std::tie(code, out) = join("web");
    EXPECT_EQ(code, 2);
    EXPECT_NE(out.find("'web' is not running"), std::string::npos) << out;

    // Another message instead of Join (an empty envelope): refused and closed.
    bus::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = busd_->dir() + "/busd.cluster.sock";
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    ASSERT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << path;
    const char junk[] = "\x00\x00\x00\x00";
    ASSERT_EQ(::write(fd.get(), junk, sizeof junk - 1), static_cast<ssize_t>(sizeof junk - 1));
    char buf[256];
    ssize_t n;
    std::string answer;
    while ((n = ::read(fd.get(), buf, sizeof buf)) > 0)
        answer.append(buf, static_cast<std::size_t>(n));
    EXPECT_EQ(n, 0) << "busd closes the connection";
    EXPECT_NE(answer.find("JoinAck"), std::string::npos) << "after saying why";
    EXPECT_NE(busd_->log().find("refused pid"), std::string::npos) << busd_->log();

    // busd's own app is none the worse.
    ASSERT_TRUE(control("start", "web"));
    ASSERT_TRUE(wait_for("running", 1)) << busd_->log();
}

} // namespace

namespace {

// A worker is on the bus through the link busd gave it (Client::from_parent, beside the
// Worker's cluster channel), listed with its own pid.
TEST_F(ClusterControlTest, WorkerReachesTheBusWithClientFromParent) {
    start(app_config(self_exe, {"--worker", "client"}, port_, 2));
    ASSERT_TRUE(control("ls"));
    const auto pids = busd_->worker_pids();
    std::set<std::uint32_t> answered;
    std::string last_error;
    ASSERT_TRUE(run_until(io_,
                          [&] {
                              auto reply =
                                  client_->request_wait("web.whoami", bus::v1::Ready(), 5s);
                              if (!reply) {
                                  last_error = reply.error().message();
                                  return false;
                              }
                              auto me = reply.value().as<bus::v1::Ready>();
                              if (me)
                                  answered.insert(me.value().pid());
                              return answered.size() == 2;
                          }))
        << last_error << "\n"
        << busd_->log();
    for (auto pid : answered)
        EXPECT_TRUE(pids.count(static_cast<pid_t>(pid))) << pid;
    auto clients = client_->request_wait("$sys.clients", bus::v1::Ready(), 5s);
    ASSERT_TRUE(clients) << clients.error().message();
    auto list = clients.value().as<bus::v1::ClientList>();
    ASSERT_TRUE(list);
    std::set<std::uint32_t> listed;
    for (const auto& c : list.value().clients())
        listed.insert(c.pid());
    for (auto pid : answered)
        EXPECT_TRUE(listed.count(pid)) << "listed with the worker's pid, not busd's: " << pid;
    // And it is still a worker: it serves HTTP.
    auto r = http_get(port_);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
}

} // namespace
