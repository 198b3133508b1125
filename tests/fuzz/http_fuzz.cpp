// busd's HTTP face: whatever a peer writes on a connection to it (request lines, heads, bodies,
// query strings, JSON) goes to a real in-process busd (bus::daemon::Daemon with --http) beside
// a well-behaved bus client. The face must answer or hang up, never crash, hang or leak, and
// routing must go on. The query-string decoder gets each input directly too.
#include "../support/temp_dir.hpp"

#include "http/server.hpp"

#include <bus/client.hpp>
#include <bus/daemon.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace {

struct World {
    boost::asio::io_context io;
    bus::test::TempDir dir;
    std::unique_ptr<bus::daemon::Daemon> busd;
    std::shared_ptr<bus::Client> witness;
    int port = 0;
    World() {
        bus::daemon::Config config;
        config.broker.endpoints = {"unix://" + (dir / "busd.sock")};
        config.apps_log_dir = dir / "logs";
        config.http.listen = "127.0.0.1:0";
        config.http.request_timeout = std::chrono::milliseconds(200);
        busd = bus::daemon::Daemon::start(io, std::move(config)).value();
        const auto& url = busd->http_url();
        port = std::stoi(url.substr(url.rfind(':') + 1));
        witness = bus::Client::connect(io, "unix://" + (dir / "busd.sock")).value();
        witness->subscribe(">", [](bus::Message&) {});
        if (witness->flush_wait())
            __builtin_trap();
    }
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static World world;
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    (void)bus::http::query_param(text, "subject");

    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(world.port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 && errno != EINPROGRESS)
        __builtin_trap();
    std::size_t sent = 0;
    // Write what fits, let busd read and answer, until it hangs up or has all of it and is done.
    for (int i = 0; i < 200; ++i) {
        if (sent < size) {
            const auto n = ::send(fd, data + sent, size - sent, MSG_NOSIGNAL);
            if (n > 0)
                sent += static_cast<std::size_t>(n);
            if (sent == size)
                ::shutdown(fd, SHUT_WR);
        }
        world.io.restart();
        world.io.poll();
        char sink[4096];
        const auto n = ::recv(fd, sink, sizeof sink, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN))
            break;
    }
    ::close(fd);
    for (int i = 0; i < 10; ++i) {
        world.io.restart();
        world.io.poll();
    }
    if (world.witness->flush_wait(std::chrono::seconds(5)))
        __builtin_trap();
    return 0;
}
