// NatsCluster: a NATS cluster of Debian's nats-server processes on 127.0.0.1 (routes between
// every pair, free ports reserved with ReservedPort), optionally with JetStream (store dirs in
// a temp dir) and a user/password, started and stopped (SIGTERM, or SIGKILL on demand) by the
// test. Ready once every server reports a route to each other one (/routez).
#pragma once

#include "temp_dir.hpp"
#include "test_support.hpp"

#include <bus/child_process.hpp>

#include <gtest/gtest.h>

#include <csignal>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

namespace bus::test {

// The body (and head) of an HTTP/1.0 GET on 127.0.0.1:`port`; empty when nothing answers.
inline std::string http_get(int port, const std::string& path) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{2, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::string out;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
        const std::string req =
            "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
            char buf[4096];
            for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;)
                out.append(buf, static_cast<std::size_t>(n));
        }
    }
    ::close(fd);
    return out;
}

struct NatsOptions {
    int servers = 3;
    bool jetstream = false;
    std::string user, password; // empty: no authorization
};

class NatsCluster {
public:
    NatsCluster(boost::asio::io_context& io, NatsOptions options = {})
        : io_(io), options_(std::move(options)) {
        for (int i = 0; i < options_.servers; ++i)
            nodes_.push_back(std::make_unique<Node>());
        for (int i = 0; i < options_.servers; ++i)
            start(i);
        EXPECT_TRUE(run_until(
            io_,
            [&] {
                for (int i = 0; i < options_.servers; ++i)
                    if (routes(i) < options_.servers - 1)
                        return false;
                return true;
            },
            std::chrono::seconds(20)))
            << "the NATS cluster did not form";
    }
    ~NatsCluster() {
        for (int i = 0; i < options_.servers; ++i)
            stop(i, SIGTERM);
    }
    NatsCluster(const NatsCluster&) = delete;
    NatsCluster& operator=(const NatsCluster&) = delete;

    std::string url(int i) const {
        return "nats://127.0.0.1:" + std::to_string(nodes_[i]->client.port());
    }
    // A TOML array of every server's URL, for a bridge's `servers`, `first` first.
    std::string servers_toml(int first) const {
        std::string out = "[\"" + url(first) + "\"";
        for (int i = 0; i < options_.servers; ++i)
            if (i != first)
                out += ", \"" + url(i) + "\"";
        return out + "]";
    }
    void kill(int i) { stop(i, SIGKILL); }
    void start(int i) {
        auto& n = *nodes_[i];
        std::string routes;
        for (int j = 0; j < options_.servers; ++j)
            if (j != i)
                routes += (routes.empty() ? "" : ", ") + std::string("\"nats-route://127.0.0.1:") +
                          std::to_string(nodes_[j]->route.port()) + "\"";
        std::string conf =
            "server_name: n" + std::to_string(i) +
            "\nlisten: 127.0.0.1:" + std::to_string(n.client.port()) +
            "\nhttp: 127.0.0.1:" + std::to_string(n.monitor.port()) +
            "\ncluster {\n  name: bus_test\n  listen: 127.0.0.1:" + std::to_string(n.route.port()) +
            "\n  routes: [" + routes + "]\n}\n";
        if (options_.jetstream)
            conf += "jetstream {\n  store_dir: \"" + dir_.path() + "/js" + std::to_string(i) +
                    "\"\n}\n";
        if (!options_.user.empty())
            conf += "authorization {\n  user: \"" + options_.user + "\"\n  password: \"" +
                    options_.password + "\"\n}\n";
        const auto path = dir_.write("n" + std::to_string(i) + ".conf", conf);
        auto p = bus::spawn(io_, {"nats-server", "-c", path, "-l", path + ".log"});
        ASSERT_TRUE(p) << "nats-server: " << p.error().message();
        n.process = std::move(p).value();
        n.exited.reset();
        n.process->on_exit([&n](int code, int) { n.exited = code; });
        EXPECT_TRUE(run_until(
            io_, [&] { return accepts(n.client.port()); }, std::chrono::seconds(10)))
            << "nats-server n" << i << " does not listen";
    }
    // Routes server `i` has now (its monitoring port's /routez), -1 when it does not answer.
    int routes(int i) const {
        const auto body = http_get(nodes_[i]->monitor.port(), "/routez");
        const auto at = body.find("\"num_routes\":");
        if (at == std::string::npos)
            return -1;
        return std::atoi(body.c_str() + at + 13);
    }

private:
    struct Node {
        ReservedPort client, route, monitor;
        std::shared_ptr<bus::ChildProcess> process;
        std::optional<int> exited;
    };

    void stop(int i, int signal) {
        auto& n = *nodes_[i];
        if (n.process && n.process->running()) {
            n.process->kill(signal);
            run_until(
                io_, [&] { return n.exited.has_value(); }, std::chrono::seconds(10));
        }
        n.process.reset();
    }

    static bool accepts(int port) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(static_cast<std::uint16_t>(port));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
        ::close(fd);
        return ok;
    }

    boost::asio::io_context& io_;
    NatsOptions options_;
    TempDir dir_;
    std::vector<std::unique_ptr<Node>> nodes_;
};

} // namespace bus::test
