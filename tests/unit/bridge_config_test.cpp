// busd's [[bridge.nats]] tables as the daemon reads them (bus/src/bridge/config.cpp): a good
// table read whole, and every bad value refused with a bus::ConfigError naming file and key.
#include "../support/config_errors.hpp"

#include <bus/daemon.hpp>

#include <gtest/gtest.h>

namespace {

using bus::test::BadConfig;
using bus::test::config_error;
using bus::test::names_file_and_key;
using bus::test::TempDir;

bus::daemon::Config read(const std::string& path) {
    return bus::daemon::load_config(path, {}, {});
}

TEST(BridgeConfig, ReadsEveryKey) {
    TempDir dir;
    const auto c = read(dir.write("busd.toml", R"(
[[bridge.nats]]
name = "fleet"
servers = ["nats://10.0.0.5:4222", "tls://10.0.0.6:4222"]
export = ["orders.>", "prices.quote"]
import = ["fleet.>", "inventory.get"]
durable = ["audit.>"]
user = "u"
password = "p"
tls = { ca = "/ca.pem", cert = "/me.pem", key = "/me.key" }
buffer_bytes = 65536
max_pending = 100
request_timeout_ms = 250
durable_name = "host-b"

[[bridge.nats]]
name = "other"
servers = ["nats://127.0.0.1:4222"]
creds = "/etc/bus/x.creds"
)"));
    ASSERT_EQ(c.bridges.size(), 2u);
    const auto& b = c.bridges[0];
    EXPECT_EQ(b.name, "fleet");
    EXPECT_EQ(b.servers.size(), 2u);
    EXPECT_EQ(b.exports, (std::vector<std::string>{"orders.>", "prices.quote"}));
    EXPECT_EQ(b.imports, (std::vector<std::string>{"fleet.>", "inventory.get"}));
    EXPECT_EQ(b.durables, std::vector<std::string>{"audit.>"});
    EXPECT_EQ(b.user, "u");
    EXPECT_EQ(b.password, "p");
    EXPECT_EQ(b.tls_ca, "/ca.pem");
    EXPECT_EQ(b.tls_cert, "/me.pem");
    EXPECT_EQ(b.tls_key, "/me.key");
    EXPECT_EQ(b.buffer_bytes, 65536u);
    EXPECT_EQ(b.max_pending, 100u);
    EXPECT_EQ(b.request_timeout.count(), 250);
    EXPECT_EQ(b.durable_name, "host-b");
    EXPECT_EQ(c.bridges[1].creds, "/etc/bus/x.creds");
}

class BadBridgeConfig : public ::testing::TestWithParam<BadConfig> {};

TEST_P(BadBridgeConfig, IsRefusedNamingTheKey) {
    TempDir dir;
    const std::string what = config_error(dir, GetParam().toml, read);
    EXPECT_TRUE(names_file_and_key(what, dir / "busd.toml", GetParam().key));
}

#define BRIDGE "[[bridge.nats]]\n"
#define OK_NAME "name = \"b\"\n"
#define OK_SERVERS "servers = [\"nats://127.0.0.1:4222\"]\n"
INSTANTIATE_TEST_SUITE_P(
    Bridge, BadBridgeConfig,
    ::testing::Values(
        BadConfig{"[bridge]\nzmq = 1\n", "bridge.zmq"},
        BadConfig{BRIDGE OK_SERVERS, "bridge.nats[0].name"},
        BadConfig{BRIDGE "name = \"a b\"\n" OK_SERVERS, "bridge.nats[0].name"},
        BadConfig{BRIDGE OK_NAME OK_SERVERS BRIDGE OK_NAME OK_SERVERS, "bridge.nats[1].name"},
        BadConfig{BRIDGE OK_NAME, "bridge.nats[0].servers"},
        BadConfig{BRIDGE OK_NAME "servers = [\"http://x:1\"]\n", "bridge.nats[0].servers"},
        BadConfig{BRIDGE OK_NAME OK_SERVERS "export = [\"a..b\"]\n", "bridge.nats[0].export"},
        BadConfig{BRIDGE OK_NAME OK_SERVERS "import = [\"$sys.>\"]\n", "bridge.nats[0].import"},
        BadConfig{BRIDGE OK_NAME OK_SERVERS "durable = [\">.a\"]\n", "bridge.nats[0].durable"},
        BadConfig{BRIDGE OK_NAME OK_SERVERS "user = \"u\"\n", "bridge.nats[0].password"},
        BadConfig{BRIDGE OK_NAME OK_SERVERS "nkey = \"U\"\n", "bridge.nats[0].nkey_seed"},
        BadConfig{BRIDGE OK_NAME OK_SERVERS "token = \"t\"\ncreds = \"/c\"\n", "bridge.nats[0]"},
        BadConfig{BRIDGE OK_NAME OK_SERVERS "tls = { cert = \"/c\" }\n", "bridge.nats[0].tls.key"},
        BadConfig{BRIDGE OK_NAME OK_SERVERS "max_pending = 0\n", "bridge.nats[0].max_pending"},
        BadConfig{BRIDGE OK_NAME OK_SERVERS "colour = 1\n", "bridge.nats[0].colour"}));

} // namespace
