// busd's input path: whatever a client writes on a unix:// connection (frames, envelopes,
// control bodies, subjects) goes to a real in-process Broker, beside a well-behaved client
// subscribed to everything. The broker must answer or hang up, never crash, hang or leak, and
// keep serving the other client.
#include "../support/temp_dir.hpp"

#include <bus/broker.hpp>
#include <bus/client.hpp>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace {

struct World {
    boost::asio::io_context io;
    bus::test::TempDir dir;
    std::unique_ptr<bus::broker::Broker> broker;
    std::shared_ptr<bus::Client> witness;
    World() {
        bus::broker::Options options;
        options.endpoints = {"unix://" + (dir / "busd.sock")};
        options.limits.max_message_size = 64 * 1024;
        broker = bus::broker::Broker::start(io, options).value();
        witness = bus::Client::connect(io, options.endpoints[0]).value();
        witness->subscribe(">", [](bus::Message&) {});
        witness->serve("svc", [](bus::Message&, bus::Responder& r) { r.reply_bytes("ok"); });
        if (witness->flush_wait())
            __builtin_trap();
    }
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static World world;
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    (world.dir / "busd.sock").copy(addr.sun_path, sizeof addr.sun_path - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0)
        __builtin_trap();
    (void)::send(fd, data, size, MSG_NOSIGNAL);
    ::shutdown(fd, SHUT_WR);
    // Let the broker read all of it and answer; then hang up.
    for (int i = 0; i < 50; ++i) {
        world.io.restart();
        world.io.poll();
    }
    ::close(fd);
    for (int i = 0; i < 10; ++i) {
        world.io.restart();
        world.io.poll();
    }
    // The other client is still served.
    if (world.witness->flush_wait(std::chrono::seconds(5)))
        __builtin_trap();
    return 0;
}
