// busd's config file as the broker reads it (bus/src/broker/config.cpp): a good file read whole,
// defaults, and every bad value refused with a bus::ConfigError that names the file and the key.
#include "../support/config_errors.hpp"

#include <bus/broker_config.hpp>

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

using bus::broker::load_config;
using bus::broker::Options;
using bus::test::BadConfig;
using bus::test::config_error;
using bus::test::names_file_and_key;
using bus::test::TempDir;

TEST(BrokerConfig, ReadsEveryKey) {
    TempDir dir;
    const Options o = load_config(dir.write("busd.toml", R"(
[broker]
endpoints = ["ipc:///run/bus/busd.zmq", "unix:///run/bus/busd.sock"]
heartbeat_ms = 250

[limits]
max_message_size = 1048576
client_queue_messages = 100
client_queue_bytes = 65536
max_subscriptions = 20
max_services = 3

[access]
allow_uids = [1001, 1002]
allow_gids = [100]
monitor_uids = [1001]

[[access.rules]]
uid = 1001
publish = ["orders.>"]
subscribe = ["orders.*", "$sys.client.>"]

[[access.rules]]
gid = 100

[[app]]                            # the cluster's, not read here
name = "web"
command = "x"
)"));
    EXPECT_EQ(o.endpoints,
              (std::vector<std::string>{"ipc:///run/bus/busd.zmq", "unix:///run/bus/busd.sock"}));
    EXPECT_EQ(o.heartbeat, std::chrono::milliseconds(250));
    EXPECT_EQ(o.limits.max_message_size, 1048576u);
    EXPECT_EQ(o.limits.client_queue_messages, 100);
    EXPECT_EQ(o.limits.client_queue_bytes, 65536u);
    EXPECT_EQ(o.limits.max_subscriptions, 20u);
    EXPECT_EQ(o.limits.max_services, 3u);
    EXPECT_EQ(o.allowed_uids, (std::vector<uid_t>{1001, 1002}));
    EXPECT_EQ(o.allowed_gids, (std::vector<gid_t>{100}));
    EXPECT_EQ(o.monitor_uids, (std::vector<uid_t>{1001}));
    ASSERT_EQ(o.rules.size(), 2u);
    EXPECT_EQ(o.rules[0].uid, 1001u);
    EXPECT_FALSE(o.rules[0].gid);
    EXPECT_EQ(o.rules[0].publish, (std::vector<std::string>{"orders.>"}));
    EXPECT_EQ(o.rules[0].subscribe, (std::vector<std::string>{"orders.*", "$sys.client.>"}));
    EXPECT_FALSE(o.rules[1].uid);
    EXPECT_EQ(o.rules[1].gid, 100u);
    EXPECT_TRUE(o.rules[1].publish.empty());
}

TEST(BrokerConfig, AnEmptyFileIsTheDefaults) {
    TempDir dir;
    const Options o = load_config(dir.write("busd.toml", "# nothing\n"));
    const Options defaults;
    EXPECT_TRUE(o.endpoints.empty());
    EXPECT_EQ(o.heartbeat, defaults.heartbeat);
    EXPECT_EQ(o.limits.max_message_size, defaults.limits.max_message_size);
    EXPECT_EQ(o.limits.client_queue_bytes, defaults.limits.client_queue_bytes);
    EXPECT_TRUE(o.allowed_uids.empty());
    EXPECT_TRUE(o.rules.empty());
}

TEST(BrokerConfig, AFileThatCannotBeReadIsAConfigErrorNamingIt) {
    TempDir dir;
    try {
        load_config(dir / "missing.toml");
        FAIL() << "no ConfigError";
    } catch (const bus::ConfigError& e) {
        const std::string what = e.what();
        EXPECT_EQ(what.rfind(dir / "missing.toml" + ":", 0), 0u) << what;
    }
}

TEST(BrokerConfig, ASyntaxErrorNamesTheFileAndLine) {
    TempDir dir;
    const std::string what =
        config_error(dir, "[limits]\nmax_services = 3\nmax_services = 4\n", load_config);
    EXPECT_EQ(what.rfind(dir / "busd.toml" + ":3: ", 0), 0u) << what;
}

// Each bad value (in an otherwise good file) and the key the error must name.
class BrokerConfigRefuses : public ::testing::TestWithParam<BadConfig> {};

TEST_P(BrokerConfigRefuses, NamingTheFileAndKey) {
    TempDir dir;
    EXPECT_TRUE(names_file_and_key(config_error(dir, GetParam().toml, load_config),
                                   dir / "busd.toml", GetParam().key));
}

INSTANTIATE_TEST_SUITE_P(
    BadValues, BrokerConfigRefuses,
    ::testing::Values(
        BadConfig{"server = 1\n", "server"}, BadConfig{"[server]\n", "server"},
        BadConfig{"broker = 1\n", "broker"}, BadConfig{"[broker]\nport = 1\n", "broker.port"},
        BadConfig{"[broker]\nendpoints = \"ipc:///x\"\n", "broker.endpoints"},
        BadConfig{"[broker]\nendpoints = [1]\n", "broker.endpoints"},
        BadConfig{"[broker]\nendpoints = [\"nowhere\"]\n", "broker.endpoints"},
        BadConfig{"[broker]\nendpoints = [\"tcp://127.0.0.1:5555\"]\n", "broker.endpoints"},
        BadConfig{"[broker]\nheartbeat_ms = 49\n", "broker.heartbeat_ms"},
        BadConfig{"[broker]\nheartbeat_ms = 60001\n", "broker.heartbeat_ms"},
        BadConfig{"[broker]\nheartbeat_ms = \"1s\"\n", "broker.heartbeat_ms"},
        BadConfig{"limits = []\n", "limits"},
        BadConfig{"[limits]\nmax_topics = 1\n", "limits.max_topics"},
        BadConfig{"[limits]\nmax_message_size = 1023\n", "limits.max_message_size"},
        BadConfig{"[limits]\nmax_message_size = 268435457\n", "limits.max_message_size"},
        BadConfig{"[limits]\nclient_queue_messages = 0\n", "limits.client_queue_messages"},
        BadConfig{"[limits]\nclient_queue_bytes = 4095\n", "limits.client_queue_bytes"},
        BadConfig{"[limits]\nmax_subscriptions = 0\n", "limits.max_subscriptions"},
        BadConfig{"[limits]\nmax_services = 100001\n", "limits.max_services"},
        BadConfig{"access = \"open\"\n", "access"},
        BadConfig{"[access]\nallow = [1]\n", "access.allow"},
        BadConfig{"[access]\nallow_uids = 1001\n", "access.allow_uids"},
        BadConfig{"[access]\nallow_uids = [-1]\n", "access.allow_uids"},
        BadConfig{"[access]\nallow_gids = [\"users\"]\n", "access.allow_gids"},
        BadConfig{"[access]\nmonitor_uids = [4294967295]\n", "access.monitor_uids"},
        BadConfig{"[access]\nrules = 1\n", "access.rules"},
        BadConfig{"[[access.rules]]\npublish = [\"a\"]\n", "access.rules[0]"},
        BadConfig{"[[access.rules]]\nuid = -1\n", "access.rules[0].uid"},
        BadConfig{"[[access.rules]]\ngid = 4294967295\n", "access.rules[0].gid"},
        BadConfig{"[[access.rules]]\nuid = 1\nuser = 1\n", "access.rules[0].user"},
        BadConfig{"[[access.rules]]\nuid = 1\npublish = \"a.>\"\n", "access.rules[0].publish"},
        BadConfig{"[[access.rules]]\nuid = 1\npublish = [\"a..b\"]\n", "access.rules[0].publish"},
        BadConfig{"[[access.rules]]\nuid = 1\nsubscribe = [1]\n", "access.rules[0].subscribe"},
        BadConfig{"[[access.rules]]\nuid = 1\n[[access.rules]]\ngid = 2\nsubscribe = [\">.a\"]\n",
                  "access.rules[1].subscribe"}));

} // namespace
