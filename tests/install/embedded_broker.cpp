// A busd inside the user's program (bus::daemon, which brings bus::broker and bus::cluster),
// on a unix:// socket of its own, and a client of it: one message published and received.
#include <bus/client.hpp>
#include <bus/daemon.hpp>

#include <boost/asio/steady_timer.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

int main() {
    char dir[] = "/tmp/bus-embedded-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    const std::string endpoint = std::string("unix://") + dir + "/busd.sock";

    boost::asio::io_context io;
    bus::daemon::Config config;
    config.broker.endpoints = {endpoint};
    std::string why;
    auto daemon = bus::daemon::Daemon::start(io, config, &why);
    if (!daemon) {
        std::fprintf(stderr, "embedded_broker: %s\n", why.c_str());
        return 1;
    }
    auto client = bus::Client::connect(io, endpoint).value();
    std::string got;
    boost::asio::steady_timer give_up(io);
    client->subscribe("hello", [&](bus::Message& m) {
        got = m.payload();
        client->close();
        daemon.value()->stop([&] { give_up.cancel(); });
    });
    client->flush([&](std::error_code) { client->publish_bytes("hello", "world"); });
    // A message that never comes fails in seconds, not at ctest's timeout.
    give_up.expires_after(std::chrono::seconds(10));
    give_up.async_wait([&](boost::system::error_code ec) {
        if (!ec)
            io.stop();
    });
    io.run();
    client.reset();
    daemon.value().reset();
    std::filesystem::remove_all(dir);
    std::printf("embedded_broker got '%s'\n", got.c_str());
    return got == "world" ? 0 : 1;
}
