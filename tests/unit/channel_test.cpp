// Channel in one process, over a socketpair: ordering, fd passing, batching, backpressure,
// closing, and every kind of bad input from a broken peer (played with raw socket writes).
#include "../support/test_support.hpp"

#include <bus/channel.hpp>
#include <bus/v1/cluster.pb.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <fcntl.h>
#include <sys/stat.h>

namespace {

using bus::Channel;
using bus::test::raw_frame;
using bus::test::run_until;
using bus::test::send_with_fds;

struct Inode {
    dev_t dev;
    ino_t ino;
    bool operator==(const Inode&) const = default;
};
Inode inode_of(int fd) {
    struct stat st {};
    EXPECT_EQ(::fstat(fd, &st), 0);
    return {st.st_dev, st.st_ino};
}

// Checks that a test leaves no descriptor behind.
class ChannelTest : public ::testing::Test {
protected:
    void SetUp() override {
        make_pair(); // the loop opens its own descriptors (epoll, eventfd) on first use
        io_.poll();
        fds_before_ = bus::test::open_fd_count();
    }
    void TearDown() override {
        io_.restart();
        io_.poll(); // let closed channels run their last handlers
        EXPECT_EQ(bus::test::open_fd_count(), fds_before_) << "descriptor leak";
    }

    std::pair<std::shared_ptr<Channel>, std::shared_ptr<Channel>>
    make_pair(bus::ChannelOptions options = {}) {
        auto pair = Channel::pair(io_, options);
        EXPECT_TRUE(pair);
        return std::move(pair).value();
    }

    // A channel whose peer is a raw socket the test writes to by hand.
    std::pair<std::shared_ptr<Channel>, bus::UniqueFd>
    make_raw_peer(bus::ChannelOptions options = {}) {
        int sv[2];
        EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        auto channel = Channel::adopt(io_, bus::UniqueFd(sv[0]), options);
        EXPECT_TRUE(channel);
        return {std::move(channel).value(), bus::UniqueFd(sv[1])};
    }

    // Expects `channel` to be dropped with `expected` after the raw peer wrote `bytes` (with
    // `fds`) and, if `then_close`, hung up; and a healthy channel next to it to be untouched.
    void expect_protocol_error(bus::ChannelOptions options, std::string_view bytes,
                               std::vector<int> fds, bool then_close, std::error_code expected,
                               int valid_before = 0) {
        auto [channel, peer] = make_raw_peer(options);
        auto [left, right] = make_pair();
        int delivered = 0;
        std::optional<std::error_code> disconnected;
        channel->on_message([&](bus::Message&) { ++delivered; });
        channel->on_disconnect([&](std::error_code ec) { disconnected = ec; });
        int healthy = 0;
        right->on_message([&](bus::Message&) { ++healthy; });

        ASSERT_EQ(send_with_fds(peer.get(), bytes, fds), static_cast<ssize_t>(bytes.size()));
        for (int fd : fds)
            ::close(fd);
        if (then_close)
            peer.reset();
        ASSERT_TRUE(run_until(io_, [&] { return disconnected.has_value(); }));
        EXPECT_EQ(*disconnected, expected) << disconnected->message();
        EXPECT_EQ(delivered, valid_before); // what came before the bad part is delivered
        EXPECT_FALSE(channel->connected());

        left->send_bytes("still fine");
        ASSERT_TRUE(run_until(io_, [&] { return healthy == 1; }));
        channel.reset();
        left.reset();
        right.reset();
        peer.reset();
    }

    std::vector<int> make_pipes(int n) {
        std::vector<int> fds;
        for (int i = 0; i < n; ++i) {
            int p[2];
            EXPECT_EQ(::pipe2(p, O_CLOEXEC), 0);
            fds.push_back(p[0]);
            ::close(p[1]);
        }
        return fds;
    }

    boost::asio::io_context io_;
    std::size_t fds_before_ = 0;
};

TEST_F(ChannelTest, DeliversTypedMessagesInOrderBothWays) {
    auto [a, b] = make_pair();
    std::vector<std::uint64_t> at_b, at_a;
    b->on_message([&, b = b.get()](bus::Message& m) {
        auto beat = m.as<bus::v1::Heartbeat>();
        ASSERT_TRUE(beat);
        at_b.push_back(beat.value().seq());
        b->send(beat.value()); // echo
    });
    a->on_message([&](bus::Message& m) {
        auto beat = m.as<bus::v1::Heartbeat>();
        ASSERT_TRUE(beat);
        at_a.push_back(beat.value().seq());
    });
    constexpr std::uint64_t n = 5000;
    for (std::uint64_t i = 0; i < n; ++i) {
        bus::v1::Heartbeat beat;
        beat.set_seq(i);
        a->send(beat);
    }
    ASSERT_TRUE(run_until(io_, [&] { return at_a.size() == n; }));
    for (std::uint64_t i = 0; i < n; ++i) {
        ASSERT_EQ(at_b[i], i);
        ASSERT_EQ(at_a[i], i);
    }
}

TEST_F(ChannelTest, EnvelopesAndBytesKeepTheirFields) {
    auto [a, b] = make_pair();
    std::vector<bus::v1::Envelope> got;
    b->on_message([&](bus::Message& m) { got.push_back(m.envelope()); });
    bus::v1::Envelope e;
    e.set_kind(bus::v1::KIND_PUBLISH);
    e.set_subject("orders.eu.created");
    e.set_payload(std::string("\0binary\xff", 8));
    auto* header = e.add_headers();
    header->set_key("trace");
    header->set_value("abc");
    a->send(e);
    a->send_bytes(std::string(100000, 'z'));
    ASSERT_TRUE(run_until(io_, [&] { return got.size() == 2; }));
    EXPECT_EQ(got[0].subject(), "orders.eu.created");
    EXPECT_EQ(got[0].payload(), std::string("\0binary\xff", 8));
    ASSERT_EQ(got[0].headers_size(), 1);
    EXPECT_EQ(got[0].headers(0).value(), "abc");
    EXPECT_EQ(got[1].payload(), std::string(100000, 'z'));
    EXPECT_EQ(got[1].kind(), bus::v1::KIND_DATA);
}

TEST_F(ChannelTest, ParseRejectsAPayloadOfAnotherType) {
    auto [a, b] = make_pair();
    std::optional<std::error_code> result;
    b->on_message([&](bus::Message& m) {
        bus::v1::Shutdown shutdown;
        result = m.parse(shutdown);
    });
    bus::v1::Heartbeat beat;
    beat.set_seq(7);
    a->send(beat);
    ASSERT_TRUE(run_until(io_, [&] { return result.has_value(); }));
    EXPECT_EQ(*result, bus::errc::wrong_type);
}

TEST_F(ChannelTest, EachMessageGetsExactlyItsOwnFds) {
    auto [a, b] = make_pair();
    const std::vector<int> counts = {0, 3, 1, 0, 2, 0, 5};
    std::vector<std::vector<Inode>> sent, received;
    std::vector<std::vector<int>> to_close;
    for (int count : counts) {
        auto fds = make_pipes(count);
        std::vector<Inode> ids;
        for (int fd : fds)
            ids.push_back(inode_of(fd));
        sent.push_back(ids);
        a->send_bytes("m" + std::to_string(sent.size()), std::span<const int>(fds));
        to_close.push_back(fds);
    }
    for (auto& fds : to_close)
        for (int fd : fds)
            ::close(fd);
    b->on_message([&](bus::Message& m) {
        std::vector<Inode> ids;
        for (auto& fd : m.fds) {
            ids.push_back(inode_of(fd.get()));
            EXPECT_TRUE(::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC);
        }
        received.push_back(ids);
    });
    ASSERT_TRUE(run_until(io_, [&] { return received.size() == counts.size(); }));
    EXPECT_EQ(received, sent);
}

TEST_F(ChannelTest, BorrowedFdsQueuedBehindAFullSocketStayValid) {
    bus::ChannelOptions options;
    options.high_water_mark = 64u << 20;
    auto [a, b] = make_pair(options);
    // Fill the socket without letting b read, so the fd message has to wait in the queue.
    const std::string big(1 << 20, 'x');
    for (int i = 0; i < 8; ++i)
        a->send_bytes(big);
    io_.poll(); // a flushes until EAGAIN
    auto fds = make_pipes(1);
    const Inode sent = inode_of(fds[0]);
    a->send_bytes("with fd", std::span<const int>(fds));
    ::close(fds[0]); // the caller's copy is gone; the queued message must hold its own
    std::optional<Inode> got;
    int messages = 0;
    b->on_message([&](bus::Message& m) {
        ++messages;
        if (!m.fds.empty())
            got = inode_of(m.fds[0].get());
    });
    ASSERT_TRUE(run_until(io_, [&] { return got.has_value(); }));
    EXPECT_EQ(messages, 9);
    EXPECT_EQ(*got, sent);
}

// Megabytes queued behind a peer that does not read: frames of many sizes (a few larger than
// the queue's chunks) with fds among them, all delivered in order, each with its own fds.
TEST_F(ChannelTest, AQueueOfManyChunksKeepsOrderAndFds) {
    bus::ChannelOptions options;
    options.high_water_mark = 64u << 20;
    auto [a, b] = make_pair(options);
    std::vector<std::string> sent;
    std::vector<std::optional<Inode>> sent_fds;
    unsigned seed = 7;
    for (int i = 0; i < 3000; ++i) {
        seed = seed * 1103515245 + 12345;
        const std::size_t size = i % 500 == 499 ? 200'000 : 1 + (seed >> 16) % 2000;
        std::string payload(size, static_cast<char>('a' + i % 26));
        payload.replace(0, std::min<std::size_t>(size, 4), std::to_string(i % 10000).substr(0, 4));
        if (i % 7 == 3) {
            auto fds = make_pipes(1);
            sent_fds.push_back(inode_of(fds[0]));
            a->send_bytes(payload, std::span<const int>(fds));
            ::close(fds[0]);
        } else {
            sent_fds.push_back(std::nullopt);
            a->send_bytes(payload);
        }
        sent.push_back(std::move(payload));
    }
    EXPECT_GT(a->queued_bytes(), 2u << 20); // the socket took a fraction; the rest is queued
    std::vector<std::string> got;
    std::vector<std::optional<Inode>> got_fds;
    b->on_message([&](bus::Message& m) {
        got.emplace_back(m.payload());
        got_fds.push_back(m.fds.empty() ? std::nullopt : std::optional(inode_of(m.fds[0].get())));
        EXPECT_LE(m.fds.size(), 1u);
    });
    ASSERT_TRUE(run_until(io_, [&] { return got.size() == sent.size(); }));
    EXPECT_TRUE(got == sent); // not EXPECT_EQ: a mismatch would print megabytes
    EXPECT_EQ(got_fds, sent_fds);
    EXPECT_EQ(a->queued_bytes(), 0u);
}

TEST_F(ChannelTest, OwnedFdsAreSentAndClosed) {
    auto [a, b] = make_pair();
    auto raw = make_pipes(2);
    const Inode first = inode_of(raw[0]), second = inode_of(raw[1]);
    std::vector<bus::UniqueFd> owned;
    owned.emplace_back(raw[0]);
    owned.emplace_back(raw[1]);
    a->send_bytes("two", std::move(owned));
    std::vector<Inode> got;
    b->on_message([&](bus::Message& m) {
        for (auto& fd : m.fds)
            got.push_back(inode_of(fd.get()));
    });
    ASSERT_TRUE(run_until(io_, [&] { return got.size() == 2; }));
    EXPECT_EQ(got[0], first);
    EXPECT_EQ(got[1], second);
}

TEST_F(ChannelTest, TooManyFdsForOneMessageIsAProgrammingError) {
    bus::ChannelOptions options;
    options.max_fds_per_message = 2;
    auto [a, b] = make_pair(options);
    auto fds = make_pipes(3);
    EXPECT_THROW(a->send_bytes("x", std::span<const int>(fds)), std::invalid_argument);
    for (int fd : fds)
        ::close(fd);
    // The channel is still usable.
    int got = 0;
    b->on_message([&](bus::Message&) { ++got; });
    a->send_bytes("after");
    ASSERT_TRUE(run_until(io_, [&] { return got == 1; }));
}

TEST_F(ChannelTest, SendReportsBackpressureAndDrains) {
    bus::ChannelOptions options;
    options.high_water_mark = 4096;
    auto [a, b] = make_pair(options);
    int accepted = 0;
    bool refused = false;
    for (int i = 0; i < 100 && !refused; ++i) {
        if (a->send_bytes(std::string(100, 'p')))
            ++accepted;
        else
            refused = true;
    }
    ASSERT_TRUE(refused);
    EXPECT_GE(accepted, 30); // about 4096 / 108 bytes
    EXPECT_LE(accepted, 40);
    bool drained = false;
    a->on_drain([&] { drained = true; });
    int got = 0;
    b->on_message([&](bus::Message&) { ++got; });
    ASSERT_TRUE(run_until(io_, [&] { return drained && got == accepted + 1; }));
    EXPECT_EQ(a->queued_bytes(), 0u);
}

TEST_F(ChannelTest, QueuedFdsCountTowardsBackpressure) {
    bus::ChannelOptions options;
    options.high_water_mark = 64u << 20;
    options.high_water_fds = 4;
    auto [a, b] = make_pair(options);
    for (int i = 0; i < 8; ++i) // fill the socket so that fd messages must queue
        a->send_bytes(std::string(1 << 20, 'x'));
    io_.poll();
    auto fds = make_pipes(1);
    std::vector<bool> accepted;
    for (int i = 0; i < 5; ++i)
        accepted.push_back(a->send_bytes("fd", {fds[0]}));
    ::close(fds[0]);
    EXPECT_EQ(accepted, (std::vector<bool>{true, true, true, false, false}));
    bool drained = false;
    a->on_drain([&] { drained = true; });
    int with_fd = 0;
    b->on_message([&](bus::Message& m) { with_fd += m.fds.size() == 1; });
    ASSERT_TRUE(run_until(io_, [&] { return drained && with_fd == 5; }));
}

TEST_F(ChannelTest, CloseFromOnDrainStillDeliversEverything) {
    bus::ChannelOptions options;
    options.high_water_mark = 16 * 1024;
    auto [a, b] = make_pair(options);
    // Until send() says the queue is past its high-water mark: within 16 KiB of 1000-byte
    // messages, nothing being written while the loop does not run.
    const int bound = static_cast<int>(options.high_water_mark / 1000) + 1;
    int sent = 0;
    while (sent <= bound && a->send_bytes(std::string(1000, 'd')))
        ++sent;
    ASSERT_LE(sent, bound) << "send() never reported the queue past its high-water mark";
    ++sent; // the refused one is queued all the same
    a->on_drain([&, a = a.get()] {
        for (int i = 0; i < 5000; ++i, ++sent)
            a->send_bytes(std::string(1000, 'e'));
        a->close();
    });
    int got = 0;
    std::optional<std::error_code> closed;
    b->on_message([&](bus::Message&) { ++got; });
    b->on_disconnect([&](std::error_code ec) { closed = ec; });
    ASSERT_TRUE(run_until(io_, [&] { return closed.has_value(); }));
    EXPECT_FALSE(*closed) << closed->message();
    EXPECT_EQ(got, sent);
}

TEST_F(ChannelTest, CompletionHandlersReportSuccessInOrder) {
    auto [a, b] = make_pair();
    std::vector<int> done;
    for (int i = 0; i < 5; ++i)
        a->send_bytes("x", {}, [&done, i](std::error_code ec) {
            EXPECT_FALSE(ec);
            done.push_back(i);
        });
    ASSERT_TRUE(run_until(io_, [&] { return done.size() == 5; }));
    EXPECT_EQ(done, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST_F(ChannelTest, CloseDeliversEverythingSentBeforeIt) {
    auto [a, b] = make_pair();
    constexpr int n = 20000;
    for (int i = 0; i < n; ++i)
        a->send_bytes(std::string(1000, static_cast<char>('a' + i % 26)));
    a->close();
    int got = 0;
    bool in_order = true;
    std::optional<std::error_code> b_closed, a_closed;
    b->on_message([&](bus::Message& m) {
        in_order = in_order && m.payload()[0] == static_cast<char>('a' + got % 26);
        ++got;
    });
    b->on_disconnect([&](std::error_code ec) { b_closed = ec; });
    a->on_disconnect([&](std::error_code ec) { a_closed = ec; });
    ASSERT_TRUE(run_until(io_, [&] { return b_closed && a_closed; }));
    EXPECT_EQ(got, n);
    EXPECT_TRUE(in_order);
    EXPECT_FALSE(*b_closed);
    EXPECT_FALSE(*a_closed);
}

TEST_F(ChannelTest, DisconnectFailsWhatIsQueuedAndLaterSends) {
    auto [a, b] = make_pair();
    std::vector<std::error_code> results;
    a->send_bytes("queued", {}, [&](std::error_code ec) { results.push_back(ec); });
    a->disconnect();
    EXPECT_FALSE(a->connected());
    EXPECT_FALSE(a->send_bytes("late", {}, [&](std::error_code ec) { results.push_back(ec); }));
    std::optional<std::error_code> b_closed;
    int got = 0;
    b->on_message([&](bus::Message&) { ++got; });
    b->on_disconnect([&](std::error_code ec) { b_closed = ec; });
    ASSERT_TRUE(run_until(io_, [&] { return b_closed && results.size() == 2; }));
    EXPECT_EQ(results[0], bus::errc::channel_closed);
    EXPECT_EQ(results[1], bus::errc::channel_closed);
    EXPECT_FALSE(*b_closed);
    EXPECT_EQ(got, 0);
}

TEST_F(ChannelTest, HandlerMayDropTheLastReference) {
    auto [a, b] = make_pair();
    int got = 0;
    b->on_message([&](bus::Message&) {
        ++got;
        b->disconnect();
        b.reset();
    });
    a->send_bytes("1");
    a->send_bytes("2");
    ASSERT_TRUE(run_until(io_, [&] { return got >= 1; }));
    io_.poll();
    EXPECT_EQ(got, 1);
}

// --- bad input from a broken peer ------------------------------------------------------------

TEST_F(ChannelTest, LengthOverTheLimitIsRejected) {
    bus::ChannelOptions options;
    options.max_message_size = 1024;
    expect_protocol_error(options, raw_frame(std::string(1025, 'x')), {}, false,
                          bus::errc::frame_too_large);
}

TEST_F(ChannelTest, HugeLengthIsRejectedWithoutWaitingForTheBody) {
    expect_protocol_error({}, std::string("\xff\xff\xff\x7f", 4), {}, false,
                          bus::errc::frame_too_large);
}

TEST_F(ChannelTest, GarbageEnvelopeIsRejected) {
    expect_protocol_error({}, raw_frame("\xff\xff\xff\xff\xff"), {}, false, bus::errc::bad_frame);
}

TEST_F(ChannelTest, PeerDyingMidFrameIsReported) {
    std::string frame;
    bus::frame::append_bytes(frame, "hello world", 0);
    expect_protocol_error({}, frame.substr(0, frame.size() - 3), {}, true,
                          bus::errc::truncated_frame);
}

TEST_F(ChannelTest, FdsWithoutAFrameAreRejectedAndClosed) {
    std::string frame;
    bus::frame::append_bytes(frame, "claims none", 0);
    expect_protocol_error({}, frame, make_pipes(2), false, bus::errc::unexpected_fds, 1);
}

TEST_F(ChannelTest, FdsWithAPartialHeaderThenHangUpAreClosed) {
    expect_protocol_error({}, std::string("\x05\x00", 2), make_pipes(1), true,
                          bus::errc::truncated_frame);
}

TEST_F(ChannelTest, FrameClaimingMoreFdsThanArrivedIsRejected) {
    std::string frame;
    bus::frame::append_bytes(frame, "claims two", 2);
    expect_protocol_error({}, frame, make_pipes(1), false, bus::errc::fd_mismatch);
}

TEST_F(ChannelTest, FrameClaimingMoreFdsThanTheLimitIsRejected) {
    bus::ChannelOptions options;
    options.max_fds_per_message = 2;
    std::string frame;
    bus::frame::append_bytes(frame, "claims three", 3);
    expect_protocol_error(options, frame, make_pipes(3), false, bus::errc::too_many_fds);
}

TEST_F(ChannelTest, NodeModeRejectsInvalidJson) {
    bus::ChannelOptions options;
    options.serialization = bus::Serialization::node_json;
    expect_protocol_error(options, "{\"ok\":1}\n{not json}\n", {}, false, bus::errc::bad_json, 1);
}

TEST_F(ChannelTest, NodeModeRejectsALineOverTheLimit) {
    bus::ChannelOptions options;
    options.serialization = bus::Serialization::node_json;
    options.max_message_size = 100;
    expect_protocol_error(options, "\"" + std::string(200, 'x'), {}, false,
                          bus::errc::frame_too_large);
}

TEST_F(ChannelTest, NodeModeRejectsAHandleWithoutACmdThatClaimsIt) {
    bus::ChannelOptions options;
    options.serialization = bus::Serialization::node_json;
    expect_protocol_error(options, "{\"plain\":true}\n", make_pipes(1), false,
                          bus::errc::unexpected_fds, 1);
}

// --- Node's 'json' serialization between two C++ ends -----------------------------------------

TEST_F(ChannelTest, NodeModeCarriesJsonAndTypedMessages) {
    bus::ChannelOptions options;
    options.serialization = bus::Serialization::node_json;
    auto [a, b] = make_pair(options);
    std::vector<std::string> got;
    std::optional<std::uint64_t> seq;
    b->on_message([&](bus::Message& m) {
        EXPECT_TRUE(m.is_json());
        got.emplace_back(m.payload());
        if (auto beat = m.as<bus::v1::Heartbeat>(); beat && beat.value().seq())
            seq = beat.value().seq();
    });
    a->send_bytes(R"({"hello":"world","n":[1,2,3]})");
    a->send_bytes("{\n  \"pretty\": true\n}"); // re-serialized on one line
    bus::v1::Heartbeat beat;
    beat.set_seq(99);
    a->send(beat);
    EXPECT_THROW(a->send_bytes("not json"), std::invalid_argument);
    ASSERT_TRUE(run_until(io_, [&] { return got.size() == 3; }));
    EXPECT_EQ(got[0], R"({"hello":"world","n":[1,2,3]})");
    EXPECT_EQ(got[1], R"({"pretty":true})");
    // bus::to_json: 64-bit integers as strings, every field (README, "Messages as JSON")
    EXPECT_EQ(got[2], R"({"seq":"99","sent_unix_ns":"0","connections":0})");
    EXPECT_EQ(seq, 99u);
}

TEST_F(ChannelTest, NodeModePassesHandlesWithAcksAndKeepsOrder) {
    bus::ChannelOptions options;
    options.serialization = bus::Serialization::node_json;
    auto [a, b] = make_pair(options);
    int s[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
    const Inode sent = inode_of(s[0]);
    std::vector<std::string> order;
    std::optional<Inode> got;
    b->on_message([&](bus::Message& m) {
        order.emplace_back(m.payload());
        if (!m.fds.empty())
            got = inode_of(m.fds[0].get());
    });
    std::optional<std::error_code> acked;
    a->send_bytes(R"("before")");
    a->send_bytes(R"({"socket":1})", {s[0]}, [&](std::error_code ec) { acked = ec; });
    a->send_bytes(R"("after 1")"); // held until the ack
    a->send_bytes(R"("after 2")");
    EXPECT_THROW(a->send_bytes("1", {s[0], s[1]}), std::invalid_argument);
    ::close(s[0]);
    ::close(s[1]);
    ASSERT_TRUE(run_until(io_, [&] { return order.size() == 4 && acked; }));
    EXPECT_EQ(order, (std::vector<std::string>{R"("before")", R"({"socket":1})", R"("after 1")",
                                               R"("after 2")"}));
    EXPECT_EQ(got, sent);
    EXPECT_FALSE(*acked);
}

// Node keeps its internal messages (cmd "NODE_...") from user code; so does a channel, which
// gives them to on_internal instead (bus::cluster::Worker reads the cluster's there), with the
// handle a cluster newconn carries.
TEST_F(ChannelTest, NodeModeKeepsNodesInternalMessagesFromTheUser) {
    bus::ChannelOptions options;
    options.serialization = bus::Serialization::node_json;
    auto [a, b] = make_pair(options);
    std::vector<std::string> user, internal;
    std::optional<Inode> handle;
    b->on_message([&](bus::Message& m) { user.emplace_back(m.payload()); });
    b->on_internal([&](bus::Message& m) {
        internal.emplace_back(m.payload());
        if (!m.fds.empty())
            handle = inode_of(m.fds[0].get());
    });
    int s[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
    const Inode sent = inode_of(s[0]);
    a->send_bytes(R"({"cmd":"NODE_CLUSTER","act":"disconnect"})");
    a->send_bytes(R"({"cmd":"NODE_CLUSTER","act":"newconn","key":"k"})", {s[0]});
    a->send_bytes(R"({"cmd":"NODE_","not":"internal: nothing after the prefix"})");
    a->send_bytes(R"({"cmd":"USER","msg":1})");
    ::close(s[0]);
    ::close(s[1]);
    ASSERT_TRUE(run_until(io_, [&] { return user.size() == 2 && internal.size() == 2; }));
    EXPECT_EQ(internal[0], R"({"cmd":"NODE_CLUSTER","act":"disconnect"})");
    EXPECT_EQ(internal[1], R"({"act":"newconn","cmd":"NODE_CLUSTER","key":"k"})");
    EXPECT_EQ(handle, sent);
    EXPECT_EQ(user[0], R"({"cmd":"NODE_","not":"internal: nothing after the prefix"})");
    EXPECT_EQ(user[1], R"({"cmd":"USER","msg":1})");
}

// Without an on_internal handler, what came with an internal message is closed, not leaked.
TEST_F(ChannelTest, NodeModeClosesTheHandleOfAnInternalMessageNobodyReads) {
    bus::ChannelOptions options;
    options.serialization = bus::Serialization::node_json;
    auto [a, b] = make_pair(options);
    int user = 0;
    b->on_message([&](bus::Message&) { ++user; });
    int s[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
    bus::UniqueFd ours(s[1]);
    a->send_bytes(R"({"cmd":"NODE_CLUSTER","act":"newconn"})", {s[0]});
    ::close(s[0]);
    a->send_bytes(R"("then a user message")");
    ASSERT_TRUE(run_until(io_, [&] { return user == 1; }));
    // Every copy of the other end is closed: reading ours sees the end of the stream.
    char byte;
    ASSERT_TRUE(run_until(io_, [&] { return ::recv(s[1], &byte, 1, MSG_DONTWAIT) == 0; }));
}

TEST_F(ChannelTest, NodeModeAnswersAHandleThatLostItsFdWithANack) {
    bus::ChannelOptions options;
    options.serialization = bus::Serialization::node_json;
    auto [channel, peer] = make_raw_peer(options);
    int got = 0;
    channel->on_message([&](bus::Message&) { ++got; });
    const std::string line = R"({"cmd":"NODE_HANDLE","type":"net.Socket","msg":1})"
                             "\n";
    ASSERT_EQ(::write(peer.get(), line.data(), line.size()), static_cast<ssize_t>(line.size()));
    std::string answer;
    ASSERT_TRUE(run_until(io_, [&] {
        char buf[256];
        const ssize_t n = ::recv(peer.get(), buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0)
            answer.append(buf, static_cast<std::size_t>(n));
        return answer.find('\n') != std::string::npos;
    }));
    EXPECT_EQ(answer, "{\"cmd\":\"NODE_HANDLE_NACK\"}\n");
    EXPECT_EQ(got, 0);
    EXPECT_TRUE(channel->connected());
}

TEST(ChannelFromParent, FailsClearlyWithoutAChannel) {
    ::unsetenv("BUS_CHANNEL_FD");
    ::unsetenv("NODE_CHANNEL_FD");
    boost::asio::io_context io;
    auto channel = Channel::from_parent(io);
    ASSERT_FALSE(channel);
    EXPECT_EQ(channel.error(), bus::errc::no_parent_channel);
}

TEST(ChannelFromParent, RefusesNodeAdvancedSerialization) {
    ::setenv("NODE_CHANNEL_FD", "3", 1);
    ::setenv("NODE_CHANNEL_SERIALIZATION_MODE", "advanced", 1);
    boost::asio::io_context io;
    auto channel = Channel::from_parent(io);
    ::unsetenv("NODE_CHANNEL_FD");
    ::unsetenv("NODE_CHANNEL_SERIALIZATION_MODE");
    ASSERT_FALSE(channel);
    EXPECT_EQ(channel.error(), bus::errc::unsupported_serialization);
}

} // namespace
