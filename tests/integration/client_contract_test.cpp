// What bus::Client promises its user when things end: a broker that dies or was never there, a
// client that closes, drains or is dropped at exit. The real busd, as a separate process, with
// publishers in child processes (this binary re-run with `--child MODE ENDPOINT ARG`) where the
// promise is about a process that exits. Each promise runs over both links: ZeroMQ (ipc://) and
// the channel framing (unix://).
#include "../support/busd.hpp"
#include "../support/client.hpp"
#include "../support/temp_dir.hpp"
#include "../support/test_support.hpp"

#include <utility> // before Asio's awaitable.hpp (Boost 1.74 misses it: DESIGN.md)

#include <bus/client.hpp>
#include <bus/endpoint.hpp>
#include <bus/v1/broker.pb.h>
#include <bus/v1/cluster.pb.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <future>
#include <set>
#include <thread>

namespace {

using bus::test::Busd;
using bus::test::run_until;
using namespace std::chrono_literals;

std::string self_exe;

class ClientContract : public ::testing::TestWithParam<std::string> {
protected:
    void SetUp() override { busd_ = std::make_unique<Busd>(io_); }
    void TearDown() override {
        clients_.clear();
        busd_.reset();
    }
    std::string endpoint() const { return GetParam() == "ipc" ? busd_->ipc() : busd_->unix(); }
    std::shared_ptr<bus::Client> connect(const std::string& name) {
        clients_.push_back(bus::test::connect_client(io_, endpoint(), name));
        return clients_.back();
    }
    void flush(const std::shared_ptr<bus::Client>& c) { bus::test::flush(io_, c); }
    // Runs this binary as `--child mode endpoint arg` and waits for its exit code.
    int run_child(const std::string& mode, const std::string& arg) {
        auto p = bus::spawn(io_, {self_exe, "--child", mode, endpoint(), arg});
        EXPECT_TRUE(p);
        if (!p)
            return -1;
        std::optional<int> code;
        p.value()->on_exit([&](int c, int) { code = c; });
        EXPECT_TRUE(run_until(
            io_, [&] { return code.has_value(); }, 20s));
        return code.value_or(-1);
    }
    // A child publishes 100 messages and ends as `how` says, returning from main at once,
    // its loop never run: the subscriber here must get all 100, in order.
    void expect_all_published_arrive(const std::string& how) {
        auto sub = connect("sub");
        std::vector<std::string> got;
        sub->subscribe("exit.>", [&](bus::Message& m) { got.emplace_back(m.payload()); });
        flush(sub);
        EXPECT_EQ(run_child("publish-and-" + how, "exit.msgs"), 0);
        EXPECT_TRUE(run_until(
            io_, [&] { return got.size() >= 100; }, 10s))
            << "after " << how << ", " << got.size() << " of 100 arrived";
        ASSERT_EQ(got.size(), 100u);
        for (std::size_t i = 0; i < got.size(); ++i)
            EXPECT_EQ(got[i], std::to_string(i));
    }

    boost::asio::io_context io_;
    std::unique_ptr<Busd> busd_;
    std::vector<std::shared_ptr<bus::Client>> clients_;
};

INSTANTIATE_TEST_SUITE_P(Links, ClientContract, ::testing::Values("ipc", "unix"),
                         [](const auto& param_info) { return param_info.param; });

// --- nothing published is lost at exit ---------------------------------------------------------

TEST_P(ClientContract, NothingPublishedIsLostWhenTheProgramClosesTheClientAndExits) {
    expect_all_published_arrive("close");
}

TEST_P(ClientContract, NothingPublishedIsLostWhenTheProgramJustDropsTheClient) {
    expect_all_published_arrive("drop");
}

TEST_P(ClientContract, DrainDeliversWhatWasRoutedAnswersWhatCameThenCloses) {
    auto pub = connect("pub"), worker = connect("worker");
    int got = 0, served = 0;
    worker->subscribe("work.items", [&](bus::Message&) { ++got; });
    worker->serve("work.do", [&](bus::Message&, bus::Responder& r) {
        ++served;
        r.reply_bytes("done");
    });
    flush(worker);
    int answered = 0;
    for (int i = 0; i < 50; ++i) {
        pub->publish_bytes("work.items", "x");
        pub->request_bytes("work.do", "y", 10s, [&](std::error_code ec, bus::Message&) {
            EXPECT_FALSE(ec) << ec.message();
            ++answered;
        });
    }
    flush(pub); // busd has routed all of it to the worker, which has not read it yet
    std::optional<std::error_code> drained;
    worker->drain([&](std::error_code ec) { drained = ec; });
    EXPECT_FALSE(drained) << "completed inside drain()";
    ASSERT_TRUE(run_until(io_, [&] { return drained.has_value(); }));
    EXPECT_FALSE(*drained) << drained->message();
    EXPECT_EQ(got, 50);
    EXPECT_EQ(served, 50);
    ASSERT_TRUE(run_until(io_, [&] { return answered == 50; }));
    EXPECT_FALSE(worker->connected());
    // Withdrawn: nothing more reaches it, and its service is gone.
    std::optional<std::error_code> after;
    pub->request_bytes("work.do", "z", 5s, [&](std::error_code ec, bus::Message&) { after = ec; });
    ASSERT_TRUE(run_until(io_, [&] { return after.has_value(); }));
    EXPECT_EQ(*after, bus::errc::no_responders);
    EXPECT_EQ(served, 50);
}

// --- no broker: broker_unavailable, fast, and nothing failed is sent later ---------------------

TEST_P(ClientContract, WithTheBrokerGoneRequestsFailAtOnceNamingTheEndpoint) {
    auto c = connect("requester");
    std::vector<bus::ClientEvent> events;
    c->on_event([&](const bus::ClientEvent& e) { events.push_back(e); });
    busd_->kill();
    ASSERT_TRUE(run_until(
        io_, [&] { return !c->connected(); }, 10s));
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(events.front().kind, bus::ClientEvent::Kind::disconnected);
    EXPECT_EQ(bus::to_string(events.front().kind), "disconnected");
    EXPECT_NE(events.front().detail.find(endpoint()), std::string::npos) << events.front().detail;
    // A request with a long timeout fails with broker_unavailable, from the loop, not after
    // its timeout (that would be errc::timeout).
    std::optional<std::error_code> failed;
    c->request_bytes("anyone", "?", 60s, [&](std::error_code ec, bus::Message&) { failed = ec; });
    EXPECT_FALSE(failed) << "completed inside request()";
    ASSERT_TRUE(run_until(
        io_, [&] { return failed.has_value(); }, 5s));
    EXPECT_EQ(*failed, bus::errc::broker_unavailable);
    std::optional<std::error_code> flushed;
    c->flush([&](std::error_code ec) { flushed = ec; }, 60s);
    ASSERT_TRUE(run_until(
        io_, [&] { return flushed.has_value(); }, 5s));
    EXPECT_EQ(*flushed, bus::errc::broker_unavailable);
    // Publishing into the outage is reported, a few times, with the count, not per message.
    events.clear();
    for (int i = 0; i < 1000; ++i)
        c->publish_bytes("lost", "x");
    run_until(
        io_, [] { return false; }, 500ms);
    std::uint64_t reported = 0;
    for (const auto& e : events)
        if (e.kind == bus::ClientEvent::Kind::error)
            reported += e.dropped;
    if (GetParam() == "unix") {
        // Nothing can be queued on a closed socket: every message is counted, in few events.
        EXPECT_EQ(reported, 1000u);
        EXPECT_LE(events.size(), 5u);
    } else {
        EXPECT_EQ(reported, 0u) << "ZeroMQ queues them for the next broker";
    }
}

TEST(ClientNoBroker, AZeroMqEndpointNobodyServesFailsRequestsWithBrokerUnavailable) {
    boost::asio::io_context io;
    bus::test::TempDir dir;
    const std::string endpoint = "ipc://" + dir.path() + "/nobody.zmq";
    auto client = bus::Client::connect(io, endpoint);
    ASSERT_TRUE(client) << "connecting over ZeroMQ is asynchronous";
    auto c = client.value();
    std::optional<std::string> down;
    c->on_event([&](const bus::ClientEvent& e) {
        if (e.kind == bus::ClientEvent::Kind::disconnected)
            down = e.detail;
    });
    std::optional<std::error_code> first, second;
    c->request_bytes("anyone", "?", 60s, [&](std::error_code ec, bus::Message&) { first = ec; });
    ASSERT_TRUE(run_until(
        io, [&] { return first.has_value(); }, 30s));
    EXPECT_EQ(*first, bus::errc::broker_unavailable) << first->message();
    ASSERT_TRUE(down.has_value());
    EXPECT_NE(down->find(endpoint), std::string::npos) << *down;
    c->request_bytes("anyone", "?", 60s, [&](std::error_code ec, bus::Message&) { second = ec; });
    io.poll(); // once the loop runs: the client knows there is no broker
    ASSERT_TRUE(second.has_value());
    EXPECT_EQ(*second, bus::errc::broker_unavailable);
}

TEST(ClientNoBroker, AUnixEndpointNobodyServesIsAnErrorAtConnect) {
    boost::asio::io_context io;
    bus::test::TempDir dir;
    auto client = bus::Client::connect(io, "unix://" + dir.path() + "/nobody.sock");
    ASSERT_FALSE(client);
    EXPECT_EQ(client.error(), std::errc::no_such_file_or_directory);
}

// Over ipc://, busd stalls (SIGSTOP), is killed -9 and started again. What the requester sent
// into the stall fills the socket and waits in ZeroMQ's queue; the requester gives up on it
// (three silent heartbeats: broker_unavailable). ZeroMQ would hand that queue to the next busd;
// none of it may reach the service. Nor may anything requested while busd was away.
TEST(ClientNoBroker, ARequestThatFailedIsNeverExecutedAfterBusdRestarts) {
    boost::asio::io_context io;
    Busd busd(io);
    bus::ClientOptions service_options;
    service_options.heartbeat = 200ms;
    service_options.reconnect_max = 50ms; // serving again as soon as busd is back
    auto service = bus::Client::connect(io, busd.unix(), service_options).value();
    std::set<std::string> executed;
    service->serve("once", [&](bus::Message& m, bus::Responder& r) {
        executed.emplace(m.payload().substr(0, m.payload().find(' ')));
        r.reply_bytes("ok");
    });
    ASSERT_FALSE(service->flush_wait());
    bus::ClientOptions options;
    options.heartbeat = 200ms;
    auto requester = bus::Client::connect(io, busd.ipc(), options).value();
    ASSERT_TRUE(run_until(io, [&] { return requester->connected(); }));
    std::set<std::string> failed, succeeded;
    int next = 0;
    // Long enough that busd's own deadline check does not hide a replay.
    auto request = [&](std::size_t padding) {
        const std::string id = std::to_string(next++);
        requester->request_bytes(
            "once", id + " " + std::string(padding, 'p'), 20s,
            [&, id](std::error_code ec, bus::Message&) { (ec ? failed : succeeded).insert(id); });
    };
    bool requesting = true;
    boost::asio::steady_timer every(io);
    std::function<void()> keep_requesting = [&] {
        if (!requesting)
            return;
        request(0);
        every.expires_after(5ms);
        every.async_wait([&](boost::system::error_code ec) {
            if (!ec)
                keep_requesting();
        });
    };
    keep_requesting();
    ASSERT_TRUE(run_until(io, [&] { return succeeded.size() >= 20; }));

    ASSERT_EQ(::kill(busd.pid(), SIGSTOP), 0);
    for (int i = 0; i < 300; ++i)
        request(32 * 1024); // 9.6 MB: more than the socket holds
    ASSERT_TRUE(run_until(
        io, [&] { return !requester->connected(); }, 10s));
    busd.kill();
    run_until(
        io, [] { return false; }, 500ms); // requests go on failing while busd is away
    const auto failed_before_restart = failed.size();
    busd.start();
    const auto before = succeeded.size();
    ASSERT_TRUE(run_until(
        io, [&] { return succeeded.size() >= before + 50; }, 20s))
        << "requests never succeeded again after busd restarted";
    requesting = false;
    every.cancel();
    ASSERT_TRUE(run_until(
        io, [&] { return failed.size() + succeeded.size() == std::size_t(next); }, 30s));
    EXPECT_GT(failed_before_restart, 300u) << "the outage was not exercised";
    std::vector<std::string> replayed;
    for (const auto& id : failed)
        if (executed.count(id))
            replayed.push_back(id);
    EXPECT_TRUE(replayed.empty()) << replayed.size() << " of " << failed.size()
                                  << " failed requests were executed anyway, e.g. "
                                  << replayed.front();
    std::printf("[          ] %d requests: %zu failed (stalled, then away), %zu succeeded, "
                "%zu replayed\n",
                next, failed.size(), succeeded.size(), replayed.size());
}

// --- Asio completion tokens --------------------------------------------------------------------

TEST_P(ClientContract, AsyncCallsTakeCallbacksAwaitablesAndFutures) {
    auto c = connect("async");
    c->serve("echo", [](bus::Message& m, bus::Responder& r) { r.reply_bytes(m.payload()); });
    flush(c);

    // A callback: the Message by value.
    std::optional<std::string> by_callback;
    c->async_request_bytes("echo", "cb", 5s, [&](std::error_code ec, bus::Message m) {
        EXPECT_FALSE(ec);
        by_callback = std::string(m.payload());
    });
    ASSERT_TRUE(run_until(io_, [&] { return by_callback.has_value(); }));
    EXPECT_EQ(*by_callback, "cb");

    // An awaitable: the operation starts when awaited, with the arguments it was given.
    std::optional<std::string> awaited;
    std::optional<std::error_code> flushed;
    boost::asio::co_spawn(
        io_,
        [&]() -> boost::asio::awaitable<void> {
            std::string payload = "aw";
            auto op = c->async_request_bytes("echo", payload, 5s, boost::asio::use_awaitable);
            payload = "changed"; // moved into the operation, not referenced
            auto [ec, m] = co_await std::move(op);
            EXPECT_FALSE(ec);
            awaited = std::string(m.payload());
            flushed = co_await c->async_flush(5s, boost::asio::use_awaitable);
        },
        boost::asio::detached);
    ASSERT_TRUE(run_until(io_, [&] { return flushed.has_value(); }));
    EXPECT_EQ(*awaited, "aw");
    EXPECT_FALSE(*flushed);

    // A future, with the loop on another thread.
    bus::v1::Heartbeat beat;
    beat.set_seq(7);
    auto future = c->async_request("echo", beat, 5s, boost::asio::use_future);
    std::thread loop([&] {
        const auto give_up = std::chrono::steady_clock::now() + 10s;
        while (future.wait_for(0s) != std::future_status::ready &&
               std::chrono::steady_clock::now() < give_up)
            io_.run_one_for(100ms);
    });
    loop.join();
    ASSERT_EQ(future.wait_for(0s), std::future_status::ready);
    auto [ec, reply] = future.get();
    EXPECT_FALSE(ec);
    EXPECT_EQ(reply.as<bus::v1::Heartbeat>().value().seq(), 7u);
}

TEST_P(ClientContract, AsyncCallsOnAClosedClientFailFromTheLoop) {
    auto c = connect("closed");
    c->close();
    std::optional<std::error_code> request, flush, drain;
    c->async_request_bytes("x", "?", 5s, [&](std::error_code ec, bus::Message) { request = ec; });
    c->async_flush(5s, [&](std::error_code ec) { flush = ec; });
    c->async_drain(5s, [&](std::error_code ec) { drain = ec; });
    EXPECT_FALSE(request || flush || drain) << "completed inside the initiating call";
    auto future = c->async_request_bytes("x", "?", 5s, boost::asio::use_future);
    std::weak_ptr<bus::Client> weak = c;
    clients_.clear();
    c.reset(); // the operations keep the client alive until they complete
    EXPECT_FALSE(weak.expired());
    io_.poll();
    ASSERT_TRUE(request && flush && drain);
    EXPECT_EQ(*request, bus::errc::channel_closed);
    EXPECT_EQ(*flush, bus::errc::channel_closed);
    EXPECT_EQ(*drain, bus::errc::channel_closed);
    ASSERT_EQ(future.wait_for(0s), std::future_status::ready);
    EXPECT_EQ(std::get<0>(future.get()), bus::errc::channel_closed);
    EXPECT_TRUE(weak.expired());
}

TEST_P(ClientContract, TypedSubscribeDeducesTheTypeServiceErrorsCarryTheirDetailRepliesMayBeKept) {
    auto c = connect("typed");
    std::vector<std::uint64_t> seqs;
    std::error_code last;
    c->subscribe("typed.beat",
                 [&](std::error_code ec, const bus::v1::Heartbeat& beat, bus::Message&) {
                     last = ec;
                     if (!ec)
                         seqs.push_back(beat.seq());
                 });
    c->serve("picky", [](bus::Message&, bus::Responder& r) {
        r.fail("out_of_stock", "sku 42 has none left");
    });
    flush(c);
    bus::v1::Heartbeat beat;
    beat.set_seq(3);
    c->publish("typed.beat", beat);
    c->publish_bytes("typed.beat", "\xff\xff not a heartbeat");
    ASSERT_TRUE(run_until(io_, [&] { return seqs.size() == 1 && last; }));
    EXPECT_EQ(seqs[0], 3u);
    EXPECT_EQ(last, bus::errc::wrong_type);
    std::optional<std::error_code> failed;
    std::string name, detail;
    c->request_bytes("picky", "?", 5s, [&](std::error_code ec, const bus::Message& m) {
        failed = ec;
        name = m.subject();
        detail = m.header("detail");
    });
    ASSERT_TRUE(run_until(io_, [&] { return failed.has_value(); }));
    EXPECT_EQ(*failed, bus::errc::request_failed);
    EXPECT_EQ(name, "out_of_stock");
    EXPECT_EQ(detail, "sku 42 has none left");
    // A reply handler may also take the Message by value: it owns it.
    std::optional<bus::Message> kept;
    c->serve("echo", [](bus::Message& m, bus::Responder& r) { r.reply_bytes(m.payload()); });
    flush(c);
    c->request_bytes("echo", "mine", 5s, [&](std::error_code ec, bus::Message m) {
        EXPECT_FALSE(ec);
        kept = std::move(m);
    });
    ASSERT_TRUE(run_until(io_, [&] { return kept.has_value(); }));
    EXPECT_EQ(kept->payload(), "mine");
}

int child_main(const std::string& mode, const std::string& endpoint, const std::string& arg) {
    boost::asio::io_context io;
    auto client = bus::Client::connect(io, endpoint);
    if (!client)
        return 2;
    auto c = client.value();
    // No loop runs: what is published waits in the client's queue until it closes.
    for (int i = 0; i < 100; ++i)
        c->publish_bytes(arg, std::to_string(i));
    if (mode == "publish-and-close")
        c->close();
    else if (mode != "publish-and-drop")
        return 3;
    return 0; // dropped here
}

} // namespace

int main(int argc, char** argv) {
    self_exe = std::filesystem::canonical("/proc/self/exe").string();
    if (argc == 5 && std::string_view(argv[1]) == "--child")
        return child_main(argv[2], argv[3], argv[4]);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
