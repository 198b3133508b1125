// Channels between real processes: bus::spawn, bus-echo, and this test binary re-run as a child
// (`--child MODE`, as libuv's test-ipc does) to play the parts bus-echo does not.
#include "../support/test_support.hpp"

#include <bus/child_process.hpp>
#include <bus/v1/cluster.pb.h>

#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <thread>

namespace {

using bus::test::run_until;
using namespace std::chrono_literals;

std::string self_exe;
const std::string echo_bin = std::string(BUS_BIN_DIR) + "/bus-echo";

struct Exit {
    int code;
    int signal;
};

// A spawned child and what it did.
struct Child {
    std::shared_ptr<bus::ChildProcess> process;
    std::optional<Exit> exit;
    std::optional<std::error_code> disconnected;
    std::vector<bus::Message> messages;
};

class SpawnTest : public ::testing::Test {
protected:
    void SetUp() override {
        {
            auto warm = bus::Channel::pair(io_); // the loop opens its descriptors on first use
        }
        io_.poll();
        fds_before_ = bus::test::open_fd_count();
    }
    void TearDown() override {
        children_.clear();
        io_.restart();
        io_.poll();
        EXPECT_EQ(bus::test::open_fd_count(), fds_before_) << "descriptor leak";
    }

    Child& start(std::vector<std::string> argv, bus::SpawnOptions options = {}) {
        auto process = bus::spawn(io_, argv, options);
        EXPECT_TRUE(process) << argv[0] << ": " << process.error().message();
        auto& child = *children_.emplace_back(std::make_unique<Child>());
        child.process = std::move(process).value();
        child.process->on_exit([&child](int code, int signal) { child.exit = Exit{code, signal}; });
        child.process->channel()->on_message(
            [&child](bus::Message& m) { child.messages.push_back(std::move(m)); });
        child.process->channel()->on_disconnect(
            [&child](std::error_code ec) { child.disconnected = ec; });
        return child;
    }

    bool wait_exit(Child& child) {
        return run_until(
            io_, [&] { return child.exit.has_value(); }, 20s);
    }

    boost::asio::io_context io_;
    std::vector<std::unique_ptr<Child>> children_;
    std::size_t fds_before_ = 0;
};

ino_t inode_of(int fd) {
    struct stat st {};
    EXPECT_EQ(::fstat(fd, &st), 0);
    return st.st_ino;
}

TEST_F(SpawnTest, EchoReturnsEveryMessageInOrderWithItsFds) {
    auto& echo = start({echo_bin});
    auto& ch = echo.process->channel();
    constexpr int n = 2000;
    std::vector<ino_t> sent_inodes;
    for (int i = 0; i < n; ++i) {
        bus::v1::Heartbeat beat;
        beat.set_seq(static_cast<std::uint64_t>(i));
        if (i % 100 == 0) {
            int p[2];
            ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
            sent_inodes.push_back(inode_of(p[1]));
            ch->send(beat, {p[1]});
            ::close(p[0]);
            ::close(p[1]);
        } else {
            ch->send(beat);
        }
    }
    ASSERT_TRUE(run_until(io_, [&] { return echo.messages.size() == n; }));
    std::vector<ino_t> got_inodes;
    for (int i = 0; i < n; ++i) {
        auto beat = echo.messages[static_cast<std::size_t>(i)].as<bus::v1::Heartbeat>();
        ASSERT_TRUE(beat);
        ASSERT_EQ(beat.value().seq(), static_cast<std::uint64_t>(i));
        ASSERT_EQ(echo.messages[static_cast<std::size_t>(i)].fds.size(), i % 100 == 0 ? 1u : 0u);
        for (auto& fd : echo.messages[static_cast<std::size_t>(i)].fds)
            got_inodes.push_back(inode_of(fd.get()));
    }
    EXPECT_EQ(got_inodes, sent_inodes);
    echo.messages.clear();
    ch->close();
    ASSERT_TRUE(wait_exit(echo));
    EXPECT_EQ(echo.exit->code, 0);
    EXPECT_EQ(echo.exit->signal, 0);
}

TEST_F(SpawnTest, PassedPipeReachesTheChildAndComesBackUsable) {
    auto& echo = start({echo_bin});
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    bus::UniqueFd read_end(p[0]);
    echo.process->channel()->send_bytes("take this", {p[1]});
    ::close(p[1]);
    ASSERT_TRUE(run_until(io_, [&] { return echo.messages.size() == 1; }));
    ASSERT_EQ(echo.messages[0].fds.size(), 1u);
    ASSERT_EQ(::write(echo.messages[0].fds[0].get(), "ping", 4), 4);
    echo.messages.clear(); // closes the last write end
    char buf[8] = {};
    ASSERT_EQ(::read(read_end.get(), buf, sizeof buf), 4);
    EXPECT_STREQ(buf, "ping");
}

TEST_F(SpawnTest, EchoExitsZeroWhenTheParentDisconnects) {
    auto& echo = start({echo_bin});
    echo.process->channel()->disconnect();
    ASSERT_TRUE(wait_exit(echo));
    EXPECT_EQ(echo.exit->code, 0);
    EXPECT_EQ(echo.exit->signal, 0);
}

TEST_F(SpawnTest, EchoExitsNonZeroNotBySignalOnBadInput) {
    auto& echo = start({echo_bin});
    const int fd = echo.process->channel()->native_handle();
    ASSERT_EQ(::write(fd, "\xff\xff\xff\xff garbage", 12), 12);
    ASSERT_TRUE(wait_exit(echo));
    EXPECT_EQ(echo.exit->code, 1);
    EXPECT_EQ(echo.exit->signal, 0);
    ASSERT_TRUE(run_until(io_, [&] { return echo.disconnected.has_value(); }));
}

TEST_F(SpawnTest, ChildThatCannotTakeTheFdsReportsTruncatedControlData) {
    // Under a descriptor limit the kernel cannot install every passed fd: it sets MSG_CTRUNC.
    // The child must close what did arrive, report and exit non-zero.
    auto& echo = start({"/bin/sh", "-c", "ulimit -n 16 && exec \"$0\"", echo_bin});
    std::vector<int> fds;
    for (int i = 0; i < 20; ++i) {
        int p[2];
        ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
        fds.push_back(p[0]);
        ::close(p[1]);
    }
    echo.process->channel()->send_bytes("many", std::span<const int>(fds));
    for (int fd : fds)
        ::close(fd);
    ASSERT_TRUE(wait_exit(echo));
    EXPECT_EQ(echo.exit->code, 1);
    EXPECT_EQ(echo.exit->signal, 0);
    EXPECT_TRUE(echo.messages.empty());
}

TEST_F(SpawnTest, OneBrokenChildDoesNotDisturbAnother) {
    auto& broken = start({echo_bin});
    auto& healthy = start({echo_bin});
    ASSERT_EQ(::write(broken.process->channel()->native_handle(), "\x01\x00\x00\x00\xff", 5), 5);
    for (int i = 0; i < 100; ++i)
        healthy.process->channel()->send_bytes("still here");
    ASSERT_TRUE(wait_exit(broken));
    EXPECT_EQ(broken.exit->code, 1);
    ASSERT_TRUE(run_until(io_, [&] { return healthy.messages.size() == 100; }));
    EXPECT_FALSE(healthy.exit.has_value());
}

TEST_F(SpawnTest, KillSignalsTheChild) {
    auto& echo = start({echo_bin});
    EXPECT_FALSE(echo.process->kill(SIGTERM));
    ASSERT_TRUE(wait_exit(echo));
    EXPECT_EQ(echo.exit->code, -1);
    EXPECT_EQ(echo.exit->signal, SIGTERM);
    EXPECT_EQ(echo.process->kill(SIGTERM), std::errc::no_such_process);
}

TEST_F(SpawnTest, MissingProgramIsAnErrorNotAChild) {
    auto process = bus::spawn(io_, {"/nonexistent/program"});
    ASSERT_FALSE(process);
    EXPECT_EQ(process.error(), std::errc::no_such_file_or_directory);
}

TEST_F(SpawnTest, DroppingTheChildProcessKillsAndReapsIt) {
    auto process = bus::spawn(io_, {"sleep", "30"});
    ASSERT_TRUE(process);
    const pid_t pid = process.value()->pid();
    ASSERT_EQ(::kill(pid, 0), 0);
    process.value().reset();
    EXPECT_EQ(::kill(pid, 0), -1); // reaped: not even a zombie
    EXPECT_EQ(errno, ESRCH);
}

TEST_F(SpawnTest, ChildFindsItsChannelAndGrandchildrenDoNot) {
    bus::SpawnOptions options;
    options.channel_fd = 7;
    options.env = {"BUS_TEST_MARK=present"};
    auto& child = start({self_exe, "--child", "inherit-check"}, options);
    ASSERT_TRUE(run_until(io_, [&] { return child.messages.size() == 1; }));
    EXPECT_EQ(child.messages[0].payload(), "fd=7 cloexec=1 env-cleared=1 mark=present");
    ASSERT_TRUE(wait_exit(child));
    EXPECT_EQ(child.exit->code, 0);
}

TEST_F(SpawnTest, EverythingSentBeforeCloseArrivesFromAnExitingChild) {
    auto& child = start({self_exe, "--child", "send-then-close"});
    ASSERT_TRUE(run_until(
        io_, [&] { return child.disconnected && child.exit; }, 30s));
    EXPECT_FALSE(*child.disconnected);
    ASSERT_EQ(child.messages.size(), 100000u);
    for (std::size_t i = 0; i < child.messages.size(); ++i)
        ASSERT_EQ(child.messages[i].payload(), std::to_string(i));
    EXPECT_EQ(child.exit->code, 0);
}

TEST_F(SpawnTest, PeerDyingMidFrameIsAnErrorNotAHang) {
    auto& child = start({self_exe, "--child", "half-frame"});
    ASSERT_TRUE(run_until(io_, [&] { return child.disconnected.has_value(); }));
    EXPECT_EQ(*child.disconnected, bus::errc::truncated_frame);
    EXPECT_TRUE(child.messages.empty());
    ASSERT_TRUE(wait_exit(child));
}

// --- child modes ----------------------------------------------------------------------------

int child_main(const std::string& mode) {
    boost::asio::io_context io;
    const char* mark = std::getenv("BUS_TEST_MARK");
    auto channel = bus::Channel::from_parent(io);
    if (!channel) {
        std::fprintf(stderr, "child: %s\n", channel.error().message().c_str());
        return 2;
    }
    auto ch = channel.value();
    if (mode == "inherit-check") {
        const int fd = ch->native_handle();
        const bool cloexec = ::fcntl(fd, F_GETFD) & FD_CLOEXEC;
        const bool cleared = std::getenv("BUS_CHANNEL_FD") == nullptr;
        ch->send_bytes("fd=" + std::to_string(fd) + " cloexec=" + std::to_string(cloexec) +
                       " env-cleared=" + std::to_string(cleared) +
                       " mark=" + (mark ? mark : "missing"));
        ch->close();
    } else if (mode == "send-then-close") {
        for (int i = 0; i < 100000; ++i)
            ch->send_bytes(std::to_string(i));
        ch->close();
    } else if (mode == "half-frame") {
        std::string frame;
        bus::frame::append_bytes(frame, "never finished", 0);
        (void)!::write(ch->native_handle(), frame.data(), frame.size() / 2);
        std::_Exit(0);
    } else {
        return 3;
    }
    io.run();
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    self_exe = std::filesystem::canonical("/proc/self/exe").string();
    if (argc == 3 && std::string_view(argv[1]) == "--child")
        return child_main(argv[2]);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
