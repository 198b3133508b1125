// A whole busd in this process: bus::daemon::Daemon on the test's own loop, as busd's main
// runs it, with real clients over its real sockets.
#include "../support/temp_dir.hpp"
#include "../support/test_support.hpp"

#include <bus/client.hpp>
#include <bus/daemon.hpp>
#include <bus/v1/broker.pb.h>
#include <bus/v1/cluster.pb.h>

#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <optional>

namespace {

using namespace std::chrono_literals;
using bus::test::run_until;

class DaemonTest : public ::testing::Test {
protected:
    bus::daemon::Config config() const {
        bus::daemon::Config c;
        c.broker.endpoints = {unix_endpoint(), "ipc://" + dir_ + "/busd.zmq"};
        c.apps_log_dir = dir_ + "/logs";
        c.log = [this](const std::string& line) { log_ += line + "\n"; };
        return c;
    }
    std::string unix_endpoint() const { return "unix://" + dir_ + "/busd.sock"; }

    boost::asio::io_context io_;
    bus::test::TempDir tmp_;
    const std::string dir_ = tmp_.path();
    mutable std::string log_;
};

TEST_F(DaemonTest, RoutesBetweenClientsAndAnswersClusterControl) {
    std::string why;
    auto daemon = bus::daemon::Daemon::start(io_, config(), &why);
    ASSERT_TRUE(daemon) << why;
    EXPECT_EQ(daemon.value()->endpoints().size(), 2u);

    for (const auto& endpoint : daemon.value()->endpoints()) {
        auto client = bus::Client::connect(io_, endpoint);
        ASSERT_TRUE(client) << endpoint << ": " << client.error().message();
        auto& c = *client.value();
        std::optional<std::string> got;
        c.subscribe("greetings", [&](bus::Message& m) { got = std::string(m.payload()); });
        ASSERT_EQ(c.flush_wait(5s), std::error_code()) << endpoint;
        c.publish_bytes("greetings", "hello over " + endpoint);
        ASSERT_TRUE(run_until(io_, [&] { return got.has_value(); })) << endpoint;
        EXPECT_EQ(*got, "hello over " + endpoint);

        // $sys.cluster.* is the daemon's cluster, handed over by the broker.
        auto ls = c.request_wait("$sys.cluster.ls", bus::v1::ClusterCommand(), 5s);
        ASSERT_TRUE(ls) << ls.error().message();
        bus::v1::ClusterList apps;
        ASSERT_EQ(ls.value().parse(apps), std::error_code());
        EXPECT_EQ(apps.apps_size(), 0);
        c.close();
    }
}

TEST_F(DaemonTest, ASecondDaemonOnTheSameEndpointsSaysWhoServesThem) {
    auto first = bus::daemon::Daemon::start(io_, config());
    ASSERT_TRUE(first);
    std::string why;
    auto second = bus::daemon::Daemon::start(io_, config(), &why);
    ASSERT_FALSE(second);
    EXPECT_NE(why.find("another busd already serves"), std::string::npos) << why;
    // The first one still serves.
    EXPECT_TRUE(bus::Client::connect(io_, unix_endpoint()));
}

TEST_F(DaemonTest, StopClosesTheEndpointsAndCallsBack) {
    auto daemon = bus::daemon::Daemon::start(io_, config());
    ASSERT_TRUE(daemon);
    ASSERT_TRUE(std::filesystem::exists(dir_ + "/busd.sock"));
    bool stopped = false;
    daemon.value()->stop([&] { stopped = true; });
    ASSERT_TRUE(run_until(io_, [&] { return stopped; }));
    EXPECT_FALSE(std::filesystem::exists(dir_ + "/busd.sock"));
    EXPECT_FALSE(std::filesystem::exists(dir_ + "/busd.zmq"));
    EXPECT_FALSE(bus::Client::connect(io_, unix_endpoint()));
}

TEST_F(DaemonTest, SigtermStopsItGracefullyOnlyWhenAsked) {
    auto c = config();
    bool stopped = false;
    c.stopped_by_signal = [&] { stopped = true; };
    auto daemon = bus::daemon::Daemon::start(io_, std::move(c));
    ASSERT_TRUE(daemon);
    ASSERT_EQ(::raise(SIGTERM), 0); // caught: the process goes on
    ASSERT_TRUE(run_until(io_, [&] { return stopped; }));
    EXPECT_NE(log_.find("signal 15, stopping"), std::string::npos) << log_;
    EXPECT_FALSE(std::filesystem::exists(dir_ + "/busd.sock"));
}

} // namespace
