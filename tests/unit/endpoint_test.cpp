// Endpoint parsing and the per-user runtime directory (bus/endpoint.hpp): every endpoint text a
// user or a config file gives is parsed here, and the runtime directory is what keeps busd's
// sockets private.
#include "../support/temp_dir.hpp"

#include <bus/endpoint.hpp>

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include <sys/stat.h>
#include <unistd.h>

namespace {

using bus::Endpoint;

TEST(Endpoint, ParsesEachSchemeAndPrintsItBack) {
    for (const std::string text :
         {"ipc:///run/user/1000/bus/busd.zmq", "unix:///tmp/bus-1000/busd.sock",
          "tcp://127.0.0.1:7777", "tcp://[::1]:7777", "unix://relative/path"}) {
        auto e = bus::parse_endpoint(text);
        ASSERT_TRUE(e) << text;
        EXPECT_EQ(e.value().str(), text);
    }
    auto e = bus::parse_endpoint("unix:///a/b.sock");
    ASSERT_TRUE(e);
    EXPECT_EQ(e.value().scheme, Endpoint::Scheme::unix_socket);
    EXPECT_EQ(e.value().address, "/a/b.sock");
    e = bus::parse_endpoint("tcp://host:1");
    ASSERT_TRUE(e);
    EXPECT_EQ(e.value().scheme, Endpoint::Scheme::tcp);
    EXPECT_EQ(e.value().address, "host:1");
}

TEST(Endpoint, RefusesWhatIsNotOne) {
    using namespace std::string_literals;
    for (const std::string& text :
         {""s, "busd.sock"s, "unix://"s, "ipc:/x"s, "http://127.0.0.1:80"s, "tcp://no-port"s,
          "UNIX:///x"s, "unix:///a\0b"s, "://x"s}) {
        auto e = bus::parse_endpoint(text);
        ASSERT_FALSE(e) << text;
        EXPECT_EQ(e.error(), bus::errc::bad_endpoint) << text;
    }
}

TEST(Endpoint, WorkersJoinBesideALocalEndpointOnly) {
    auto path = bus::cluster_socket_beside("unix:///run/bus/busd.sock");
    ASSERT_TRUE(path);
    EXPECT_EQ(path.value(), "/run/bus/busd.cluster.sock");
    path = bus::cluster_socket_beside("ipc://busd.zmq");
    ASSERT_TRUE(path);
    EXPECT_EQ(path.value(), "./busd.cluster.sock");
    EXPECT_FALSE(bus::cluster_socket_beside("tcp://127.0.0.1:1"));
    EXPECT_FALSE(bus::cluster_socket_beside("nonsense"));
}

// Sets (or, with no value, unsets) an environment variable for one test and puts the old value
// back.
class ScopedEnv {
public:
    ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
        if (const char* old = std::getenv(name))
            old_ = old;
        if (value)
            ::setenv(name, value->c_str(), 1);
        else
            ::unsetenv(name);
    }
    ~ScopedEnv() {
        if (old_)
            ::setenv(name_, old_->c_str(), 1);
        else
            ::unsetenv(name_);
    }

private:
    const char* name_;
    std::optional<std::string> old_;
};

class RuntimeDir : public ::testing::Test {
protected:
    bus::test::TempDir tmp_;
    const std::string base_ = tmp_.path();
};

TEST_F(RuntimeDir, IsMadePrivateUnderXdgRuntimeDir) {
    ScopedEnv xdg("XDG_RUNTIME_DIR", base_);
    auto dir = bus::runtime_dir();
    ASSERT_TRUE(dir) << dir.error().message();
    EXPECT_EQ(dir.value(), base_ + "/bus");
    struct stat st {};
    ASSERT_EQ(::stat(dir.value().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0700u);
    // A second look finds it as it is.
    EXPECT_TRUE(bus::runtime_dir());
}

TEST_F(RuntimeDir, ADirectoryOthersCanEnterIsRefused) {
    ScopedEnv xdg("XDG_RUNTIME_DIR", base_);
    ASSERT_EQ(::mkdir((base_ + "/bus").c_str(), 0755), 0);
    ASSERT_EQ(::chmod((base_ + "/bus").c_str(), 0755), 0); // whatever the umask
    auto dir = bus::runtime_dir();
    ASSERT_FALSE(dir);
    EXPECT_EQ(dir.error(), std::errc::permission_denied);
}

TEST_F(RuntimeDir, ALinkInItsPlaceIsRefused) {
    ScopedEnv xdg("XDG_RUNTIME_DIR", base_);
    ASSERT_EQ(::mkdir((base_ + "/elsewhere").c_str(), 0700), 0);
    ASSERT_EQ(::symlink((base_ + "/elsewhere").c_str(), (base_ + "/bus").c_str()), 0);
    EXPECT_FALSE(bus::runtime_dir());
}

TEST_F(RuntimeDir, DefaultEndpointsLiveInItAndClientsUseUnixUnlessBusEndpointSaysOtherwise) {
    ScopedEnv xdg("XDG_RUNTIME_DIR", base_);
    {
        ScopedEnv none("BUS_ENDPOINT", std::nullopt);
        EXPECT_EQ(bus::default_endpoint().value(), "unix://" + base_ + "/bus/busd.sock");
        EXPECT_EQ(bus::default_unix_endpoint().value(), "unix://" + base_ + "/bus/busd.sock");
        EXPECT_EQ(bus::default_ipc_endpoint().value(), "ipc://" + base_ + "/bus/busd.zmq");
    }
    ScopedEnv endpoint("BUS_ENDPOINT", "ipc:///somewhere/else.zmq");
    EXPECT_EQ(bus::default_endpoint().value(), "ipc:///somewhere/else.zmq");
    EXPECT_EQ(bus::default_unix_endpoint().value(), "unix://" + base_ + "/bus/busd.sock");
}

} // namespace
