// bus::cluster::Worker started by a Node.js cluster primary: the test plays the primary on the
// other end of the worker's channel, speaking what lib/internal/cluster/primary.js sends, and
// checks what the worker answers. tests/interop/node_cluster.test.js runs it under a real one.
#include "../support/test_support.hpp"

#include <bus/channel.hpp>
#include <bus/cluster.hpp>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/stat.h>

namespace {

using bus::test::run_until;
using nlohmann::json;

class WorkerUnderNode : public ::testing::Test {
protected:
    // The worker's end goes where a Node primary leaves it: NODE_CHANNEL_FD, NODE_UNIQUE_ID.
    void SetUp() override {
        int s[2];
        ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
        bus::ChannelOptions options;
        options.serialization = bus::Serialization::node_json;
        auto primary = bus::Channel::adopt(io_, bus::UniqueFd(s[0]), options);
        ASSERT_TRUE(primary);
        primary_ = std::move(primary).value();
        primary_->on_internal([this](bus::Message& m) {
            got_.push_back(json::parse(m.payload()));
            EXPECT_TRUE(m.fds.empty());
        });
        primary_->on_disconnect([this](std::error_code) { disconnected_ = true; });
        worker_fd_ = s[1];
        ::setenv("NODE_CHANNEL_FD", std::to_string(s[1]).c_str(), 1);
        ::setenv("NODE_UNIQUE_ID", "7", 1);
    }
    void TearDown() override {
        ::unsetenv("NODE_CHANNEL_FD");
        ::unsetenv("NODE_UNIQUE_ID");
        ::unsetenv("BUS_LISTEN");
    }
    std::unique_ptr<bus::cluster::Worker> start() {
        auto worker = bus::cluster::Worker::from_parent(io_);
        EXPECT_TRUE(worker) << worker.error().message();
        return worker ? std::move(worker).value() : nullptr;
    }
    // Started with one address, taking connections into connections_, its queryServer sent.
    std::unique_ptr<bus::cluster::Worker> start_serving() {
        ::setenv("BUS_LISTEN", "tcp://127.0.0.1:0", 1);
        auto worker = start();
        if (!worker)
            return nullptr;
        worker->on_connection(
            [this](bus::cluster::Connection c) { connections_.push_back(std::move(c)); });
        next(); // online
        worker->ready();
        return worker;
    }
    json next() {
        const std::size_t want = seen_ + 1;
        EXPECT_TRUE(run_until(io_, [&] { return got_.size() >= want; }));
        return got_.size() >= want ? got_[seen_++] : json();
    }
    void from_primary(json message, bus::Fds fds = {}) {
        message["cmd"] = "NODE_CLUSTER";
        message["seq"] = primary_seq_++;
        primary_->send_bytes(message.dump(), std::move(fds));
    }
    // Through queryServer to listening, as the round-robin primary answers: key, no handle.
    std::string listen_as_round_robin() {
        const json query = next();
        from_primary(
            {{"ack", query["seq"]},
             {"errno", nullptr},
             {"key", "127.0.0.1:8000:4:undefined:0"},
             {"data", nullptr},
             {"sockname", {{"address", "127.0.0.1"}, {"family", "IPv4"}, {"port", 8000}}}});
        const json listening = next();
        EXPECT_EQ(listening["act"], "listening");
        return "127.0.0.1:8000:4:undefined:0";
    }

    boost::asio::io_context io_;
    std::shared_ptr<bus::Channel> primary_;
    std::vector<json> got_;
    std::vector<bus::cluster::Connection> connections_;
    std::size_t seen_ = 0;
    std::uint64_t primary_seq_ = 100;
    bool disconnected_ = false;
    int worker_fd_ = -1;
};

ino_t inode_of(int fd) {
    struct stat st {};
    ::fstat(fd, &st);
    return st.st_ino;
}

TEST_F(WorkerUnderNode, AsksForEachAddressAsAJavaScriptWorkerWould) {
    ::setenv("BUS_LISTEN", "tcp://127.0.0.1:8000, tcp://:9000,tcp://[::1]:0", 1);
    auto worker = start();
    ASSERT_TRUE(worker);
    EXPECT_EQ(worker->instance(), 7);
    EXPECT_EQ(std::getenv("NODE_UNIQUE_ID"), nullptr) << "not inherited by the worker's children";
    const json online = next();
    EXPECT_EQ(online["cmd"], "NODE_CLUSTER");
    EXPECT_EQ(online["act"], "online");
    worker->ready();
    // Field for field what net.Server.listen() sends (no `fd`: the primary's key has it as
    // "undefined"), so the primary gives both kinds of worker the same server.
    json first = next(), second = next(), third = next();
    for (auto* q : {&first, &second, &third}) {
        EXPECT_EQ((*q)["act"], "queryServer");
        EXPECT_EQ((*q)["index"], 0);
        EXPECT_TRUE((*q)["data"].is_null());
        EXPECT_FALSE(q->contains("fd"));
        q->erase("seq");
        q->erase("cmd");
        q->erase("act");
        q->erase("index");
        q->erase("data");
    }
    EXPECT_EQ(first, (json{{"address", "127.0.0.1"}, {"port", 8000}, {"addressType", 4}}));
    EXPECT_EQ(second, (json{{"address", nullptr}, {"port", 9000}, {"addressType", 4}}));
    EXPECT_EQ(third, (json{{"address", "::1"}, {"port", 0}, {"addressType", 6}}));
}

TEST_F(WorkerUnderNode, TakesRoundRobinConnectionsAndAcknowledgesEach) {
    auto worker = start_serving();
    ASSERT_TRUE(worker);
    const std::string key = listen_as_round_robin();
    EXPECT_EQ(got_.back()["port"], 8000) << "listening tells the port the primary bound";

    int s[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
    bus::UniqueFd client(s[1]);
    const ino_t sent = inode_of(s[0]);
    from_primary({{"act", "newconn"}, {"key", key}}, {s[0]});
    ::close(s[0]);
    const json ack = next();
    EXPECT_EQ(ack["ack"], primary_seq_ - 1);
    EXPECT_EQ(ack["accepted"], true);
    ASSERT_EQ(connections_.size(), 1u);
    EXPECT_EQ(inode_of(connections_[0].fd.get()), sent);
    EXPECT_TRUE(::fcntl(connections_[0].fd.get(), F_GETFL) & O_NONBLOCK);

    // Not ours (a key the primary never gave us) or no socket with it: refused, so the primary
    // hands the connection to another worker.
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
    from_primary({{"act", "newconn"}, {"key", "elsewhere:1:4:undefined:0"}}, {s[0]});
    ::close(s[0]);
    ::close(s[1]);
    EXPECT_EQ(next()["accepted"], false);
    from_primary({{"act", "newconn"}, {"key", key}});
    EXPECT_EQ(next()["accepted"], false);
    // What the worker cannot read as the protocol is ignored, and it goes on.
    from_primary({{"ack", "not a number"}});
    from_primary({{"act", 5}});
    from_primary({{"act", "something newer"}});
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
    from_primary({{"act", "newconn"}, {"key", key}}, {s[0]});
    ::close(s[0]);
    ::close(s[1]);
    EXPECT_EQ(next()["accepted"], true);
    EXPECT_EQ(connections_.size(), 2u);
}

TEST_F(WorkerUnderNode, AcceptsItselfOnTheSocketTheNonePolicyHandsOver) {
    auto worker = start_serving();
    ASSERT_TRUE(worker);
    const json query = next();
    // The primary's listening socket, as SharedHandle sends it with its answer.
    bus::UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    sockaddr_in at{};
    at.sin_family = AF_INET;
    at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof at;
    ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&at), sizeof at), 0);
    ASSERT_EQ(::listen(listener.get(), 16), 0);
    ASSERT_EQ(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&at), &length), 0);
    // SharedHandle answers errno 0 on success (round robin: null).
    from_primary({{"ack", query["seq"]}, {"errno", 0}, {"key", "k"}, {"data", nullptr}},
                 {listener.get()});
    EXPECT_EQ(next()["act"], "listening");
    bus::UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ASSERT_EQ(::connect(client.get(), reinterpret_cast<sockaddr*>(&at), sizeof at), 0);
    ASSERT_TRUE(run_until(io_, [&] { return connections_.size() == 1; }));
    EXPECT_EQ(connections_[0].local_address, "127.0.0.1:" + std::to_string(ntohs(at.sin_port)));
}

TEST_F(WorkerUnderNode, DisconnectFromThePrimaryIsShutdown) {
    auto worker = start_serving();
    ASSERT_TRUE(worker);
    std::optional<std::chrono::milliseconds> grace;
    worker->on_shutdown([&](std::chrono::milliseconds g) { grace = g; });
    const std::string key = listen_as_round_robin();
    from_primary({{"act", "disconnect"}});
    ASSERT_TRUE(run_until(io_, [&] { return grace && disconnected_; }));
    EXPECT_EQ(*grace, bus::cluster::Worker::default_grace);
    EXPECT_TRUE(worker->shutting_down());
}

class WorkerUnderNodeDeathTest : public WorkerUnderNode {
protected:
    // ready() with `listen` in BUS_LISTEN (none when null) exits 1, saying `why` on stderr.
    void expect_ready_exits(const char* listen, const std::string& why) {
        GTEST_FLAG_SET(death_test_style, "threadsafe");
        if (listen)
            ::setenv("BUS_LISTEN", listen, 1);
        EXPECT_EXIT(
            {
                auto worker = start();
                worker->ready();
            },
            ::testing::ExitedWithCode(1), why);
    }
};

TEST_F(WorkerUnderNodeDeathTest, WithoutBusListenItSaysWhyAndExits1) {
    expect_ready_exits(nullptr, "without BUS_LISTEN");
}

TEST_F(WorkerUnderNodeDeathTest, ABadAddressIsNamed) {
    expect_ready_exits("tcp://127.0.0.1:8000,http://x:1", "\"http://x:1\" is not tcp://HOST:PORT");
    expect_ready_exits("tcp://127.0.0.1:99999", "is not tcp://HOST:PORT");
    expect_ready_exits("tcp://nocolon", "is not tcp://HOST:PORT");
}

TEST_F(WorkerUnderNodeDeathTest, ThePrimarysErrnoIsFatalAsInNode) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    ::setenv("BUS_LISTEN", "tcp://127.0.0.1:80", 1);
    EXPECT_EXIT(
        {
            auto worker = start();
            next(); // online
            worker->ready();
            const json query = next();
            from_primary({{"ack", query["seq"]}, {"errno", -13}, {"key", "k"}});
            run_until(
                io_, [] { return false; }, std::chrono::seconds(5));
        },
        ::testing::ExitedWithCode(1), "could not listen on tcp://127.0.0.1:80 \\(errno -13\\)");
}

} // namespace
