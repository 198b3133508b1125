// Busd: a private busd as a separate process, on its own runtime directory, started and
// stopped by the test (tests that need BUS_BIN_DIR defined to find it).
#pragma once

#include "temp_dir.hpp"
#include "test_support.hpp"

#include <bus/child_process.hpp>
#include <bus/unique_fd.hpp>

#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <sys/socket.h>
#include <sys/un.h>

namespace bus::test {

inline std::string busd_path() {
    return std::string(BUS_BIN_DIR) + "/busd";
}

// A private busd: its own runtime directory, started and stopped by the test.
class Busd {
public:
    explicit Busd(boost::asio::io_context& io, std::vector<std::string> extra = {})
        : io_(io), dir_(tmp_.path()) {
        start(std::move(extra));
    }
    ~Busd() { stop(); }
    void start(std::vector<std::string> extra = {}) {
        std::vector<std::string> argv = {busd_path(), "-e", ipc(), "-e", unix()};
        argv.insert(argv.end(), extra.begin(), extra.end());
        auto p = bus::spawn(io_, argv);
        EXPECT_TRUE(p) << p.error().message();
        process_ = std::move(p).value();
        exit_.reset();
        process_->on_exit([this](int code, int) { exit_ = code; });
        // Serving once the unix:// socket accepts (it is bound after ipc://; its file
        // appears a moment before it listens, so existing is not enough).
        EXPECT_TRUE(bus::test::run_until(io_, [&] {
            if (!std::filesystem::exists(dir_ + "/busd.zmq"))
                return false;
            bus::UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
            sockaddr_un addr{};
            addr.sun_family = AF_UNIX;
            (dir_ + "/busd.sock").copy(addr.sun_path, sizeof addr.sun_path - 1);
            return ::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
        }));
    }
    void stop() {
        if (process_ && process_->running()) {
            process_->kill(SIGTERM);
            bus::test::run_until(io_, [&] { return exit_.has_value(); });
        }
        process_.reset();
    }
    void kill() {
        process_->kill(SIGKILL);
        bus::test::run_until(io_, [&] { return exit_.has_value(); });
        process_.reset();
    }
    std::string ipc() const { return "ipc://" + dir_ + "/busd.zmq"; }
    std::string unix() const { return "unix://" + dir_ + "/busd.sock"; }
    const std::string& dir() const { return dir_; }
    std::optional<int> exit_code() const { return exit_; }
    pid_t pid() const { return process_->pid(); }

private:
    boost::asio::io_context& io_;
    TempDir tmp_; // removed after the process is stopped (members go after the destructor)
    std::string dir_;
    std::shared_ptr<bus::ChildProcess> process_;
    std::optional<int> exit_;
};

} // namespace bus::test
