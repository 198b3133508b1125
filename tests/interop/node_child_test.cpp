// A C++ parent and a Node.js child: bus::spawn with Serialization::node_json starts
// `node echo_child.js`, whose process.send / on('message') must work unchanged.
#include "../support/test_support.hpp"

#include <bus/child_process.hpp>
#include <bus/v1/cluster.pb.h>

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>

namespace {

using bus::test::run_until;
using namespace std::chrono_literals;

const std::string echo_child = std::string(BUS_SOURCE_DIR) + "/tests/interop/echo_child.js";

class NodeChildTest : public ::testing::Test {
protected:
    void start(std::vector<std::string> extra = {}) {
        bus::SpawnOptions options;
        options.channel.serialization = bus::Serialization::node_json;
        std::vector<std::string> argv = {"node", echo_child};
        argv.insert(argv.end(), extra.begin(), extra.end());
        auto process = bus::spawn(io_, argv, options);
        ASSERT_TRUE(process) << process.error().message();
        child_ = std::move(process).value();
        child_->on_exit([this](int code, int signal) { exit_ = std::pair{code, signal}; });
        child_->channel()->on_message(
            [this](bus::Message& m) { messages_.push_back(std::move(m)); });
    }
    void stop_and_expect_clean_exit() {
        child_->channel()->close();
        ASSERT_TRUE(run_until(
            io_, [&] { return exit_.has_value(); }, 20s));
        EXPECT_EQ(*exit_, (std::pair{0, 0})) << "node exits 0 when its parent disconnects";
    }

    boost::asio::io_context io_;
    std::shared_ptr<bus::ChildProcess> child_;
    std::vector<bus::Message> messages_;
    std::optional<std::pair<int, int>> exit_;
};

TEST_F(NodeChildTest, TypedMessagesTravelAsProto3Json) {
    start();
    bus::v1::NewConn conn;
    conn.set_id(5);
    conn.set_peer_address("127.0.0.1:4000");
    child_->channel()->send(conn);
    child_->channel()->send_bytes(R"({"plain":["json",1,null]})");
    ASSERT_TRUE(run_until(
        io_, [&] { return messages_.size() == 2; }, 20s));
    // README, "Messages as JSON": names as in the .proto, every field, 64-bit as strings.
    EXPECT_EQ(messages_[0].payload(),
              R"({"got":{"id":"5","app":"","peer_address":"127.0.0.1:4000","local_address":""}})");
    EXPECT_EQ(messages_[1].payload(), R"({"got":{"plain":["json",1,null]}})");
    EXPECT_TRUE(messages_[0].is_json());
    stop_and_expect_clean_exit();
}

TEST_F(NodeChildTest, ManyMessagesFromNodeArriveInOrder) {
    start({"flood", "20000"});
    ASSERT_TRUE(run_until(
        io_, [&] { return messages_.size() == 20000; }, 30s));
    for (std::size_t i = 0; i < messages_.size(); ++i)
        ASSERT_EQ(messages_[i].payload(), R"({"seq":)" + std::to_string(i) + "}");
    stop_and_expect_clean_exit();
}

TEST_F(NodeChildTest, PassedSocketBecomesANetSocketAndComesBack) {
    start();
    int s[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
    bus::UniqueFd ours(s[1]);
    struct stat sent {};
    ASSERT_EQ(::fstat(s[0], &sent), 0);
    std::optional<std::error_code> acked;
    child_->channel()->send_bytes(R"({"take":"socket"})", {s[0]},
                                  [&](std::error_code ec) { acked = ec; });
    ::close(s[0]);
    ASSERT_TRUE(run_until(
        io_, [&] { return messages_.size() == 1 && acked; }, 20s));
    EXPECT_FALSE(*acked) << acked->message();
    EXPECT_EQ(messages_[0].payload(), R"({"got":{"take":"socket"},"socket":true})");
    ASSERT_EQ(messages_[0].fds.size(), 1u);
    struct stat back {};
    ASSERT_EQ(::fstat(messages_[0].fds[0].get(), &back), 0);
    EXPECT_EQ(back.st_ino, sent.st_ino);
    char buf[64] = {};
    ASSERT_TRUE(run_until(
        io_, [&] { return ::recv(ours.get(), buf, sizeof buf - 1, MSG_DONTWAIT | MSG_PEEK) > 0; }));
    ASSERT_EQ(::recv(ours.get(), buf, sizeof buf - 1, 0), 15);
    EXPECT_STREQ(buf, "hello from node");
    messages_.clear();
    stop_and_expect_clean_exit();
}

TEST_F(NodeChildTest, MessagesAfterAHandleWaitForItsAck) {
    start();
    int s[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
    bus::UniqueFd ours(s[1]);
    child_->channel()->send_bytes("1");
    child_->channel()->send_bytes("2", {s[0]});
    ::close(s[0]);
    child_->channel()->send_bytes("3");
    ASSERT_TRUE(run_until(
        io_, [&] { return messages_.size() == 3; }, 20s));
    EXPECT_EQ(messages_[0].payload(), R"({"got":1})");
    EXPECT_EQ(messages_[1].payload(), R"({"got":2,"socket":true})");
    EXPECT_EQ(messages_[2].payload(), R"({"got":3})");
    messages_.clear();
    stop_and_expect_clean_exit();
}

} // namespace
