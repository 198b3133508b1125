// busd's NATS bridge ([[bridge.nats]], docs/bridge.md) with real parts: a three-node
// nats-server cluster (tests/support/nats_cluster.hpp) and two busds with runtime dirs of their
// own standing for two hosts, A and B, each bridged to a different node of the cluster.
#include "../support/busd.hpp"
#include "../support/nats_cluster.hpp"

#include "testonly/v1/sensor.pb.h"

#include <bus/client.hpp>
#include <bus/v1/broker.pb.h>

#include <google/protobuf/descriptor.pb.h>

#include <gtest/gtest.h>

#include <map>
#include <set>

namespace {

using namespace std::chrono_literals;
using bus::test::run_until;

// A busd with a config file of its own.
struct Host {
    Host(boost::asio::io_context& io, const std::string& config,
         std::vector<std::string> extra = {})
        : path(dir.write("busd.toml", config)), busd(io, with_config(path, std::move(extra))) {}
    static std::vector<std::string> with_config(const std::string& path,
                                                std::vector<std::string> extra) {
        extra.insert(extra.begin(), {"-c", path});
        return extra;
    }
    bus::test::TempDir dir;
    std::string path;
    bus::test::Busd busd;
};

std::string bridge(const std::string& name, const std::string& servers, const std::string& exports,
                   const std::string& imports, const std::string& extra = {}) {
    return "[[bridge.nats]]\nname = \"" + name + "\"\nservers = " + servers +
           "\nexport = " + exports + "\nimport = " + imports + "\n" + extra;
}

class BridgeTest : public ::testing::Test {
protected:
    std::shared_ptr<bus::Client> connect(const bus::test::Busd& busd) {
        auto c = bus::Client::connect(io, busd.unix());
        EXPECT_TRUE(c) << c.error().message();
        auto client = std::move(c).value();
        EXPECT_TRUE(run_until(io, [&] { return client->connected(); }));
        clients.push_back(client);
        return client;
    }
    void TearDown() override {
        for (auto& c : clients)
            c->close();
    }
    bus::v1::BridgeInfo status(bus::Client& c) {
        std::optional<bus::v1::BridgeList> list;
        c.request_bytes("$sys.bridges", "", 5s, [&](std::error_code ec, bus::Message& m) {
            EXPECT_FALSE(ec) << ec.message();
            list.emplace();
            list->ParseFromString(std::string(m.payload()));
        });
        EXPECT_TRUE(run_until(io, [&] { return list.has_value(); }));
        EXPECT_EQ(list->bridges_size(), 1);
        return list->bridges_size() ? list->bridges(0) : bus::v1::BridgeInfo();
    }
    // Publishes on `subject` from `from` until `received` holds: the bridges subscribe
    // asynchronously, so the first publishes may find nobody on the way yet.
    void publish_until(bus::Client& from, const std::string& subject,
                       const std::function<bool()>& received,
                       const bus::Client::Headers& headers = {}) {
        const auto deadline = std::chrono::steady_clock::now() + 20s;
        while (!received() && std::chrono::steady_clock::now() < deadline) {
            from.publish_bytes(subject, "hello", headers, "type.googleapis.com/test.Greeting");
            run_until(io, received, 100ms);
        }
        EXPECT_TRUE(received()) << "nothing arrived on " << subject;
    }
    // Requests `service` until the answer is not no_responders (the bridges announce services
    // asynchronously), then returns it.
    std::pair<std::error_code, std::string> request(bus::Client& from, const std::string& service,
                                                    bool retry_no_responders = true) {
        const auto deadline = std::chrono::steady_clock::now() + 20s;
        for (;;) {
            std::optional<std::pair<std::error_code, std::string>> got;
            from.request_bytes(service, "ping", 3s, [&](std::error_code ec, bus::Message& m) {
                got.emplace(ec, std::string(ec ? m.header("detail") : m.payload()));
            });
            EXPECT_TRUE(run_until(io, [&] { return got.has_value(); }));
            if (!got)
                return {};
            if (!retry_no_responders || got->first != bus::errc::no_responders ||
                std::chrono::steady_clock::now() > deadline)
                return *got;
            run_until(
                io, [] { return false; }, 100ms);
        }
    }

    boost::asio::io_context io;
    std::vector<std::shared_ptr<bus::Client>> clients;
};

TEST_F(BridgeTest, PublishesCrossBothWaysWithHeadersAndType) {
    bus::test::NatsCluster nats(io);
    Host a(io, bridge("fleet", nats.servers_toml(0), "[\"a.>\"]", "[\"b.>\"]"),
           {"--http", "127.0.0.1:0"});
    Host b(io, bridge("fleet", nats.servers_toml(1), "[\"b.>\"]", "[\"a.>\"]"));
    auto pa = connect(a.busd), pb = connect(b.busd);

    std::vector<std::pair<std::string, std::string>> on_b; // (subject, header x-id)
    std::string type_on_b;
    pb->subscribe("a.>", [&](bus::Message& m) {
        on_b.emplace_back(std::string(m.subject()), std::string(m.header("x-id")));
        type_on_b = std::string(m.type_url());
    });
    std::vector<std::string> on_a;
    pa->subscribe("b.>", [&](bus::Message& m) { on_a.emplace_back(m.subject()); });
    ASSERT_FALSE(pb->flush_wait());
    ASSERT_FALSE(pa->flush_wait());

    publish_until(*pa, "a.orders", [&] { return !on_b.empty(); }, {{"x-id", "42"}});
    EXPECT_EQ(on_b.front().first, "a.orders");
    EXPECT_EQ(on_b.front().second, "42");
    EXPECT_EQ(type_on_b, "type.googleapis.com/test.Greeting");
    publish_until(*pb, "b.prices", [&] { return !on_a.empty(); });
    EXPECT_EQ(on_a.front(), "b.prices");

    // What is not exported stays home: a publish on A's c.x never reaches B, though B listens.
    std::vector<std::string> c_on_b;
    pb->subscribe("c.>", [&](bus::Message& m) { c_on_b.emplace_back(m.subject()); });
    ASSERT_FALSE(pb->flush_wait());
    pa->publish_bytes("c.x", "private");
    on_b.clear();
    publish_until(*pa, "a.marker", [&] { return !on_b.empty(); });
    EXPECT_TRUE(c_on_b.empty());

    const auto sa = status(*pa);
    EXPECT_EQ(sa.name(), "fleet");
    EXPECT_EQ(sa.state(), "connected");
    EXPECT_EQ(sa.server(), nats.url(0));
    EXPECT_GE(sa.msgs_out(), 2u);
    EXPECT_GE(sa.msgs_in(), 1u);
    // $sys.stats and /metrics show it too.
    std::optional<bus::v1::BrokerStats> stats;
    pa->request_bytes("$sys.stats", "", 5s, [&](std::error_code ec, bus::Message& m) {
        EXPECT_FALSE(ec);
        stats.emplace();
        stats->ParseFromString(std::string(m.payload()));
    });
    ASSERT_TRUE(run_until(io, [&] { return stats.has_value(); }));
    ASSERT_EQ(stats->bridges_size(), 1);
    EXPECT_EQ(stats->bridges(0).name(), "fleet");
    const auto port = stats->http().substr(stats->http().rfind(':') + 1);
    const auto metrics = bus::test::http_get(std::stoi(port), "/metrics");
    EXPECT_NE(metrics.find("bus_bridge_info{bridge=\"fleet\",kind=\"nats\",state=\"connected\""),
              std::string::npos)
        << metrics.substr(0, 300);
    EXPECT_NE(metrics.find("bus_bridge_messages_out_total{bridge=\"fleet\"}"), std::string::npos);

    const auto sb = status(*pb);
    EXPECT_EQ(sb.server(), nats.url(1));
    EXPECT_GE(sb.msgs_in(), 2u);
}

// A type registered on A only: B's busd learns it through the bridges, so tools on B (bus sub
// --json, `$sys.type`) decode what A sends.
TEST_F(BridgeTest, TypesRegisteredOnOneHostDecodeOnTheOther) {
    bus::test::NatsCluster nats(io);
    Host a(io, bridge("fleet", nats.servers_toml(0), "[\"sensors.>\"]", "[]"));
    Host b(io, bridge("fleet", nats.servers_toml(1), "[]", "[\"sensors.>\"]"));
    auto pa = connect(a.busd), pb = connect(b.busd);
    std::optional<testonly::v1::Reading> got;
    pb->subscribe("sensors.>",
                  [&](std::error_code ec, const testonly::v1::Reading& r, bus::Message&) {
                      if (!ec)
                          got = r;
                  });
    ASSERT_FALSE(pb->flush_wait());
    testonly::v1::Reading reading;
    reading.set_sensor("kitchen");
    reading.set_celsius(21.5);
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (!got && std::chrono::steady_clock::now() < deadline) {
        pa->publish("sensors.kitchen", reading);
        run_until(
            io, [&] { return got.has_value(); }, 100ms);
    }
    ASSERT_TRUE(got);
    EXPECT_EQ(got->sensor(), "kitchen");

    // B's busd answers `$sys.type` for it (what `bus sub --json` asks), from A's description.
    std::optional<google::protobuf::FileDescriptorSet> set;
    EXPECT_TRUE(run_until(
        io,
        [&] {
            std::optional<std::error_code> done;
            pb->request_bytes("$sys.type", "testonly.v1.Reading", 5s,
                              [&](std::error_code ec, bus::Message& m) {
                                  done = ec;
                                  if (!ec) {
                                      set.emplace();
                                      set->ParseFromString(std::string(m.payload()));
                                  }
                              });
            run_until(io, [&] { return done.has_value(); });
            if (!set) {
                pa->publish("sensors.kitchen", reading); // each import of it asks again
                run_until(
                    io, [] { return false; }, 100ms);
            }
            return set.has_value();
        },
        20s));
    ASSERT_TRUE(set);
    bool defines = false;
    for (const auto& file : set->file())
        for (const auto& message : file.message_type())
            defines |= file.package() + "." + message.name() == "testonly.v1.Reading";
    EXPECT_TRUE(defines);
}

TEST_F(BridgeTest, ServicesAnswerAcrossLocalFirstAndNoResponders) {
    bus::test::NatsCluster nats(io);
    Host a(io, bridge("fleet", nats.servers_toml(0), "[\"svc.>\"]", "[\"other.get\"]"));
    Host b(io,
           bridge("fleet", nats.servers_toml(1), "[\"other.>\"]", "[\"svc.get\", \"svc.none\"]"));
    auto sa = connect(a.busd), ra = connect(a.busd), sb = connect(b.busd), rb = connect(b.busd);
    sa->serve("svc.get", [](bus::Message& m, bus::Responder& r) {
        r.reply_bytes("A answers " + std::string(m.payload()));
    });
    sb->serve("other.get",
              [](bus::Message&, bus::Responder& r) { r.fail("out_of_stock", "none left"); });
    ASSERT_FALSE(sa->flush_wait());
    ASSERT_FALSE(sb->flush_wait());

    // B -> NATS -> A's service, and back.
    auto [ec, body] = request(*rb, "svc.get");
    EXPECT_FALSE(ec) << ec.message() << " " << body;
    EXPECT_EQ(body, "A answers ping");
    // A -> NATS -> B's service, whose error comes back as its error.
    auto [ec2, detail] = request(*ra, "other.get");
    EXPECT_EQ(ec2, bus::errc::request_failed) << ec2.message();
    EXPECT_EQ(detail, "none left");
    // Nobody serves svc.none anywhere: NATS's no-responders is bus's.
    auto [ec3, why] = request(*rb, "svc.none", false);
    EXPECT_EQ(ec3, bus::errc::no_responders) << ec3.message() << " " << why;

    // A local instance on B comes first: every request stays on B.
    sb->serve("svc.get", [](bus::Message&, bus::Responder& r) { r.reply_bytes("B answers"); });
    ASSERT_FALSE(sb->flush_wait());
    for (int i = 0; i < 20; ++i) {
        auto [e, text] = request(*rb, "svc.get");
        EXPECT_FALSE(e);
        EXPECT_EQ(text, "B answers");
    }
    EXPECT_GE(status(*rb).requests_out(), 2u);
    EXPECT_GE(status(*ra).requests_in(), 1u);
}

// Both busds export and import everything: a message goes A -> NATS -> B once, and never comes
// back (to A, or to B again).
TEST_F(BridgeTest, NoLoopsWhenBothExportAndImportEverything) {
    bus::test::NatsCluster nats(io);
    Host a(io, bridge("fleet", nats.servers_toml(0), "[\">\"]", "[\">\"]"));
    Host b(io, bridge("fleet", nats.servers_toml(1), "[\">\"]", "[\">\"]"));
    auto pa = connect(a.busd), pb = connect(b.busd);
    std::map<std::string, int> on_a, on_b;
    pa->subscribe("loop.>", [&](bus::Message& m) { ++on_a[std::string(m.subject())]; });
    pb->subscribe("loop.>", [&](bus::Message& m) { ++on_b[std::string(m.subject())]; });
    ASSERT_FALSE(pa->flush_wait());
    ASSERT_FALSE(pb->flush_wait());
    publish_until(*pa, "loop.warmup", [&] { return on_b.contains("loop.warmup"); });
    publish_until(*pb, "loop.warmup.b", [&] { return on_a.contains("loop.warmup.b"); });

    pa->publish_bytes("loop.once", "x");
    // Markers after it, both ways: once they have crossed, so would any copy going round.
    for (int i = 0; i < 3; ++i) {
        const auto from_a = "loop.marker.a" + std::to_string(i);
        const auto from_b = "loop.marker.b" + std::to_string(i);
        pa->publish_bytes(from_a, "m");
        ASSERT_TRUE(run_until(io, [&] { return on_b.contains(from_a); }));
        pb->publish_bytes(from_b, "m");
        ASSERT_TRUE(run_until(io, [&] { return on_a.contains(from_b); }));
    }
    pa->publish_bytes("loop.marker.end", "m");
    ASSERT_TRUE(run_until(io, [&] { return on_b.contains("loop.marker.end"); }));
    // (the warm-up was published until it crossed: maybe more than once)
    for (const auto& [subject, n] : on_a)
        EXPECT_TRUE(subject.starts_with("loop.warmup") || n == 1)
            << subject << " reached A " << n << " times";
    for (const auto& [subject, n] : on_b)
        EXPECT_TRUE(subject.starts_with("loop.warmup") || n == 1)
            << subject << " reached B " << n << " times";
    EXPECT_EQ(on_b["loop.once"], 1);
}

TEST_F(BridgeTest, BadCredentialsAreAnErrorAndBusdServesItsHost) {
    bus::test::NatsCluster nats(
        io, {.servers = 1, .jetstream = false, .user = "fleet", .password = "right"});
    Host a(io, bridge("fleet", nats.servers_toml(0), "[\">\"]", "[\">\"]",
                      "user = \"fleet\"\npassword = \"wrong\"\n"));
    auto p = connect(a.busd), s = connect(a.busd);
    bus::v1::BridgeInfo info;
    EXPECT_TRUE(run_until(io, [&] {
        info = status(*p);
        return !info.error().empty();
    }));
    EXPECT_NE(info.state(), "connected");
    EXPECT_NE(info.error().find("uthorization"), std::string::npos) << info.error();
    // busd goes on serving its own host.
    int got = 0;
    s->subscribe("local.x", [&](bus::Message&) { ++got; });
    ASSERT_FALSE(s->flush_wait());
    p->publish_bytes("local.x", "still here");
    EXPECT_TRUE(run_until(io, [&] { return got == 1; }));
}

// A's NATS server is SIGKILLed in the middle of a stream: A's bridge moves to another server
// of the cluster, and every message A published either reaches B or is counted as dropped.
TEST_F(BridgeTest, MovesToAnotherServerWhenItsServerDiesAndCountsWhatItDrops) {
    bus::test::NatsCluster nats(io);
    Host a(io, bridge("fleet", nats.servers_toml(0), "[\"m.>\"]", "[]", "buffer_bytes = 4096\n"));
    Host b(io, bridge("fleet", nats.servers_toml(1), "[]", "[\"m.>\"]"));
    auto pa = connect(a.busd), pb = connect(b.busd);
    std::set<std::string> got;
    pb->subscribe("m.>", [&](bus::Message& m) { got.insert(std::string(m.payload())); });
    ASSERT_FALSE(pb->flush_wait());
    publish_until(*pa, "m.warmup", [&] { return !got.empty(); });
    got.clear();
    const auto before = status(*pa);

    constexpr int sent = 1000;
    for (int i = 0; i < sent; ++i) {
        if (i == sent / 3)
            nats.kill(0);
        pa->publish_bytes("m.stream", std::to_string(i));
        run_until(
            io, [] { return false; }, 1ms);
    }
    ASSERT_FALSE(pa->flush_wait());
    bus::v1::BridgeInfo after;
    EXPECT_TRUE(run_until(
        io,
        [&] {
            after = status(*pa);
            return after.state() == "connected" &&
                   got.size() + (after.dropped() - before.dropped()) >= std::size_t(sent);
        },
        30s));
    EXPECT_EQ(got.size() + (after.dropped() - before.dropped()), std::size_t(sent))
        << got.size() << " arrived, " << after.dropped() - before.dropped() << " dropped";
    EXPECT_NE(after.server(), nats.url(0));
    EXPECT_GE(after.reconnects(), 1u);
}

// busd stops on SIGTERM whatever NATS does: here B's servers are all SIGKILLed while messages
// and requests stream in through its bridge (nats.c's threads posting to B's loop), and B is
// stopped while its bridge tries to reconnect. Once, such a busd slept in pause() for good.
TEST_F(BridgeTest, StopsOnSigtermAfterItsServersAreGone) {
    bus::test::NatsCluster nats(io, {.servers = 2, .jetstream = false, .user = {}, .password = {}});
    Host a(io, bridge("fleet", nats.servers_toml(0), "[\"m.>\"]", "[\"svc\"]"));
    Host b(io, bridge("fleet", nats.servers_toml(1), "[\"svc\"]", "[\"m.>\"]"));
    auto pa = connect(a.busd), sb = connect(b.busd);
    std::size_t got = 0;
    sb->subscribe("m.>", [&](bus::Message&) { ++got; });
    sb->serve("svc", [](bus::Message&, bus::Responder& r) { r.reply_bytes("pong"); });
    ASSERT_FALSE(sb->flush_wait());
    publish_until(*pa, "m.warmup", [&] { return got > 0; });
    EXPECT_EQ(request(*pa, "svc").second, "pong");

    // Seconds of traffic: many thousands of posts from nats.c's threads while B's loop is busy,
    // its servers killed in the middle.
    const auto start = std::chrono::steady_clock::now();
    for (bool killed = false; std::chrono::steady_clock::now() - start < 4s;) {
        if (!killed && std::chrono::steady_clock::now() - start > 3s) {
            for (int i = 0; i < 2; ++i)
                nats.kill(i);
            killed = true;
        }
        for (int i = 0; i < 100; ++i)
            pa->publish_bytes("m.stream", std::to_string(i));
        pa->request_bytes("svc", "ping", 1s, [](std::error_code, bus::Message&) {});
        run_until(
            io, [] { return false; }, 1ms);
    }
    sb->close();
    b.busd.stop(); // SIGTERM, then waits (10 s) for it to exit
    ASSERT_TRUE(b.busd.exit_code().has_value()) << "busd did not stop on SIGTERM";
    EXPECT_EQ(*b.busd.exit_code(), 0);
    a.busd.stop();
    ASSERT_TRUE(a.busd.exit_code().has_value()) << "busd did not stop on SIGTERM";
    EXPECT_EQ(*a.busd.exit_code(), 0);
}

// Durable subjects go through JetStream: what A publishes while B's busd is down reaches B's
// subscribers once B is back, each message once, and A's own subscribers once (not again from
// its own consumer).
TEST_F(BridgeTest, DurableSubjectsReachAHostThatWasDownOnce) {
    bus::test::NatsCluster nats(io, {.servers = 3, .jetstream = true, .user = {}, .password = {}});
    Host a(io, bridge("fleet", nats.servers_toml(0), "[]", "[]",
                      "durable = [\"audit.>\"]\ndurable_name = \"host-a\"\n"));
    Host b(io, bridge("fleet", nats.servers_toml(1), "[]", "[]",
                      "durable = [\"audit.>\"]\ndurable_name = \"host-b\"\n"));
    auto pa = connect(a.busd);
    std::map<std::string, int> on_a, on_b;
    pa->subscribe("audit.>", [&](bus::Message& m) { ++on_a[std::string(m.payload())]; });
    auto sb = connect(b.busd);
    sb->subscribe("audit.>", [&](bus::Message& m) { ++on_b[std::string(m.payload())]; });
    ASSERT_FALSE(pa->flush_wait());
    ASSERT_FALSE(sb->flush_wait());
    // JetStream's leader, the stream and both consumers: ready once a message crosses.
    const auto deadline = std::chrono::steady_clock::now() + 40s;
    while (on_b.empty() && std::chrono::steady_clock::now() < deadline) {
        pa->publish_bytes("audit.warmup", "warmup");
        run_until(
            io, [&] { return !on_b.empty(); }, 500ms);
    }
    ASSERT_FALSE(on_b.empty()) << "JetStream never carried a message";

    sb->close();
    b.busd.stop();
    for (int i = 0; i < 10; ++i)
        pa->publish_bytes("audit.login", "event " + std::to_string(i));
    ASSERT_FALSE(pa->flush_wait());
    on_b.clear();
    b.busd.start({"-c", b.path});
    sb = connect(b.busd);
    sb->subscribe("audit.>", [&](bus::Message& m) { ++on_b[std::string(m.payload())]; });
    ASSERT_FALSE(sb->flush_wait());
    EXPECT_TRUE(run_until(
        io, [&] { return on_b.size() >= 10; }, 30s))
        << on_b.size();
    // A marker after them: once it is here, any second copy would be too.
    pa->publish_bytes("audit.marker", "marker");
    EXPECT_TRUE(run_until(
        io, [&] { return on_b.contains("marker"); }, 30s));
    for (int i = 0; i < 10; ++i) {
        EXPECT_EQ(on_b["event " + std::to_string(i)], 1) << i;
        EXPECT_EQ(on_a["event " + std::to_string(i)], 1) << i;
    }
}

} // namespace
