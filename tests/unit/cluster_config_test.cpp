// The [[app]] tables of busd's config (bus/src/cluster/config.cpp): a good file read whole,
// defaults, paths taken relative to the requester's directory, and every bad value refused with a
// bus::ConfigError that names the file and the key.
#include "../support/config_errors.hpp"

#include <bus/cluster_supervisor.hpp>

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

using bus::cluster::AppConfig;
using bus::cluster::load_apps;
using bus::cluster::Mode;
using bus::cluster::parse_apps;
using bus::test::BadConfig;
using bus::test::config_error;
using bus::test::names_file_and_key;
using bus::test::TempDir;
using std::chrono::milliseconds;

TEST(ClusterConfig, ReadsEveryKey) {
    TempDir dir;
    dir.write("app.js", "");
    const auto path = dir.write("busd.toml", R"(
[broker]
heartbeat_ms = 500                 # the broker's, not read here

[[app]]
name = "web"
command = "/usr/bin/node"
args = ["server.js", "--port", "0"]
cwd = "/srv/web"
env = { NODE_ENV = "production", EMPTY = "" }
instances = 4
listen = ["tcp://127.0.0.1:8080", "tcp://[::1]:8081"]
mode = "least_connections"
max_restarts = 3
min_uptime_ms = 2000
restart_delay_ms = 50
max_restart_delay_ms = 800
stop_exit_codes = [0, 78]
kill_timeout_ms = 7000
listen_timeout_ms = 3000
heartbeat_ms = 250
heartbeat_misses = 5
ack_timeout_ms = 1500
max_pending = 64
max_memory_mb = 512
watch = [")" + dir / "app.js" + R"("]
watch_debounce_ms = 100
log_dir = "/var/log/web"
log_max_mb = 2
log_files = 3

[[app]]
name = "worker_2"
command = "w"
mode = "reuseport"
listen = ["tcp://0.0.0.0:9000"]
)");
    const auto apps = load_apps(path);
    ASSERT_EQ(apps.size(), 2u);
    const AppConfig& a = apps[0];
    EXPECT_EQ(a.name, "web");
    EXPECT_EQ(a.argv, (std::vector<std::string>{"/usr/bin/node", "server.js", "--port", "0"}));
    EXPECT_EQ(a.cwd, "/srv/web");
    EXPECT_EQ(a.env, (std::vector<std::string>{"EMPTY=", "NODE_ENV=production"})); // by name
    EXPECT_EQ(a.instances, 4);
    EXPECT_EQ(a.listen, (std::vector<std::string>{"tcp://127.0.0.1:8080", "tcp://[::1]:8081"}));
    EXPECT_EQ(a.mode, Mode::least_connections);
    EXPECT_EQ(a.restart.max_restarts, 3);
    EXPECT_EQ(a.restart.min_uptime, milliseconds(2000));
    EXPECT_EQ(a.restart.restart_delay, milliseconds(50));
    EXPECT_EQ(a.restart.max_restart_delay, milliseconds(800));
    EXPECT_EQ(a.restart.stop_exit_codes, (std::vector<int>{0, 78}));
    EXPECT_EQ(a.kill_timeout, milliseconds(7000));
    EXPECT_EQ(a.listen_timeout, milliseconds(3000));
    EXPECT_EQ(a.heartbeat, milliseconds(250));
    EXPECT_EQ(a.heartbeat_misses, 5);
    EXPECT_EQ(a.ack_timeout, milliseconds(1500));
    EXPECT_EQ(a.max_pending, 64u);
    EXPECT_EQ(a.max_memory, 512ull << 20);
    EXPECT_EQ(a.watch, (std::vector<std::string>{dir / "app.js"}));
    EXPECT_EQ(a.watch_debounce, milliseconds(100));
    EXPECT_EQ(a.log_dir, "/var/log/web");
    EXPECT_EQ(a.log_max_bytes, 2ull << 20);
    EXPECT_EQ(a.log_files, 3);
    EXPECT_EQ(apps[1].name, "worker_2");
    EXPECT_EQ(apps[1].mode, Mode::reuseport);
}

TEST(ClusterConfig, DefaultsForWhatIsNotSaid) {
    const auto apps = parse_apps("[[app]]\nname = \"a\"\ncommand = \"run\"\n", "inline");
    ASSERT_EQ(apps.size(), 1u);
    const AppConfig& a = apps[0];
    const AppConfig defaults;
    EXPECT_EQ(a.argv, std::vector<std::string>{"run"});
    EXPECT_EQ(a.cwd, "");
    EXPECT_TRUE(a.env.empty());
    EXPECT_EQ(a.instances, 1);
    EXPECT_TRUE(a.listen.empty());
    EXPECT_EQ(a.mode, Mode::round_robin);
    EXPECT_EQ(a.restart.max_restarts, defaults.restart.max_restarts);
    EXPECT_EQ(a.restart.restart_delay, defaults.restart.restart_delay);
    EXPECT_EQ(a.kill_timeout, defaults.kill_timeout);
    EXPECT_EQ(a.heartbeat, defaults.heartbeat);
    EXPECT_EQ(a.max_pending, defaults.max_pending);
    EXPECT_EQ(a.max_memory, 0u);
    EXPECT_EQ(a.log_max_bytes, defaults.log_max_bytes);
    EXPECT_EQ(a.log_files, defaults.log_files);
}

TEST(ClusterConfig, NoAppTablesIsNoApps) {
    EXPECT_TRUE(parse_apps("", "inline").empty());
    EXPECT_TRUE(parse_apps("[limits]\nmax_services = 5\n", "inline").empty());
}

TEST(ClusterConfig, RelativePathsAreTheRequesters) {
    TempDir dir;
    dir.write("main.py", "");
    const auto apps = parse_apps(R"(
[[app]]
name = "here"
command = "python3"
watch = ["main.py", "."]
log_dir = "logs"

[[app]]
name = "there"
command = "python3"
cwd = "sub/../srv"
)",
                                 "start", dir.path());
    ASSERT_EQ(apps.size(), 2u);
    EXPECT_EQ(apps[0].cwd, dir.path()); // none given: the requester's own
    EXPECT_EQ(apps[0].watch, (std::vector<std::string>{dir / "main.py", dir.path() + "/"}));
    EXPECT_EQ(apps[0].log_dir, dir / "logs");
    EXPECT_EQ(apps[1].cwd, dir / "srv");
}

TEST(ClusterConfig, AFileThatCannotBeReadIsAConfigErrorNamingIt) {
    TempDir dir;
    try {
        load_apps(dir / "missing.toml");
        FAIL() << "no ConfigError";
    } catch (const bus::ConfigError& e) {
        EXPECT_EQ(std::string(e.what()),
                  dir / "missing.toml" + ": cannot read: No such file or directory");
    }
}

TEST(ClusterConfig, ASyntaxErrorNamesTheFileAndLine) {
    TempDir dir;
    const std::string what = config_error(dir, "[[app]]\nname = \"a\"\ncommand = \n", load_apps);
    EXPECT_EQ(what.rfind(dir / "busd.toml" + ":3: ", 0), 0u) << what;
}

// Each bad value (in an otherwise good file) and the key the error must name.
class ClusterConfigRefuses : public ::testing::TestWithParam<BadConfig> {};

TEST_P(ClusterConfigRefuses, NamingTheFileAndKey) {
    TempDir dir;
    EXPECT_TRUE(names_file_and_key(config_error(dir, GetParam().toml, load_apps), dir / "busd.toml",
                                   GetParam().key));
}

// A good app: a key written after it is its own.
#define APP "[[app]]\nname = \"a\"\ncommand = \"run\"\n"

INSTANTIATE_TEST_SUITE_P(
    BadValues, ClusterConfigRefuses,
    ::testing::Values(
        BadConfig{"app = 1\n", "app"}, BadConfig{"app = [1, 2]\n", "app"},
        BadConfig{APP "colour = \"red\"\n", "app[0].colour"},
        BadConfig{"[[app]]\ncommand = \"run\"\n", "app[0].name"},
        BadConfig{"[[app]]\nname = 5\ncommand = \"run\"\n", "app[0].name"},
        BadConfig{"[[app]]\nname = \"\"\ncommand = \"run\"\n", "app[0].name"},
        BadConfig{"[[app]]\nname = \"no spaces\"\ncommand = \"run\"\n", "app[0].name"},
        BadConfig{"[[app]]\nname = \"a\"\n", "app[0].command"},
        BadConfig{"[[app]]\nname = \"a\"\ncommand = \"\"\n", "app[0].command"},
        BadConfig{"[[app]]\nname = \"a\"\ncommand = [\"run\"]\n", "app[0].command"},
        BadConfig{APP "args = \"x\"\n", "app[0].args"},
        BadConfig{APP "args = [1]\n", "app[0].args"}, BadConfig{APP "cwd = 1\n", "app[0].cwd"},
        BadConfig{APP "env = \"A=1\"\n", "app[0].env"},
        BadConfig{APP "env = { A = 1 }\n", "app[0].env.A"},
        BadConfig{APP "instances = 0\n", "app[0].instances"},
        BadConfig{APP "instances = 1025\n", "app[0].instances"},
        BadConfig{APP "instances = \"2\"\n", "app[0].instances"},
        BadConfig{APP "listen = \"tcp://127.0.0.1:80\"\n", "app[0].listen"},
        BadConfig{APP "listen = [\"http://127.0.0.1:80\"]\n", "app[0].listen"},
        BadConfig{APP "listen = [\"tcp://127.0.0.1\"]\n", "app[0].listen"},
        BadConfig{APP "listen = [\"tcp://127.0.0.1:65536\"]\n", "app[0].listen"},
        BadConfig{APP "listen = [\"tcp://127.0.0.1:8o\"]\n", "app[0].listen"},
        BadConfig{APP "mode = \"fastest\"\n", "app[0].mode"},
        BadConfig{APP "mode = 1\n", "app[0].mode"},
        BadConfig{APP "mode = \"reuseport\"\nlisten = [\"tcp://127.0.0.1:0\"]\n", "app[0].listen"},
        BadConfig{APP "max_restarts = 0\n", "app[0].max_restarts"},
        BadConfig{APP "min_uptime_ms = -1\n", "app[0].min_uptime_ms"},
        BadConfig{APP "restart_delay_ms = 3600001\n", "app[0].restart_delay_ms"},
        BadConfig{APP "max_restart_delay_ms = 1.5\n", "app[0].max_restart_delay_ms"},
        BadConfig{APP "restart_delay_ms = 200\nmax_restart_delay_ms = 100\n",
                  "app[0].max_restart_delay_ms"},
        BadConfig{APP "stop_exit_codes = 0\n", "app[0].stop_exit_codes"},
        BadConfig{APP "stop_exit_codes = [256]\n", "app[0].stop_exit_codes"},
        BadConfig{APP "stop_exit_codes = [-1]\n", "app[0].stop_exit_codes"},
        BadConfig{APP "stop_exit_codes = [\"0\"]\n", "app[0].stop_exit_codes"},
        BadConfig{APP "kill_timeout_ms = 0\n", "app[0].kill_timeout_ms"},
        BadConfig{APP "listen_timeout_ms = 0\n", "app[0].listen_timeout_ms"},
        BadConfig{APP "heartbeat_ms = 9\n", "app[0].heartbeat_ms"},
        BadConfig{APP "heartbeat_misses = 0\n", "app[0].heartbeat_misses"},
        BadConfig{APP "ack_timeout_ms = 0\n", "app[0].ack_timeout_ms"},
        BadConfig{APP "max_pending = 0\n", "app[0].max_pending"},
        BadConfig{APP "max_memory_mb = 0\n", "app[0].max_memory_mb"},
        BadConfig{APP "watch = [\"/nonexistent/bus-cluster-config-test\"]\n", "app[0].watch"},
        BadConfig{APP "watch = \"/\"\n", "app[0].watch"},
        BadConfig{APP "watch_debounce_ms = 60001\n", "app[0].watch_debounce_ms"},
        BadConfig{APP "log_dir = [\"/tmp\"]\n", "app[0].log_dir"},
        BadConfig{APP "log_max_mb = 0\n", "app[0].log_max_mb"},
        BadConfig{APP "log_files = 101\n", "app[0].log_files"},
        // The second table is named by its own index, and a name may not come twice.
        BadConfig{APP "[[app]]\nname = \"b\"\ncommand = \"run\"\ninstances = -2\n",
                  "app[1].instances"},
        BadConfig{APP APP, "app[1].name"}));

#undef APP

} // namespace
