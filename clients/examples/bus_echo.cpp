// bus-echo: a child that sends every message back to its parent unchanged, with the file
// descriptors it came with. Works under a bus parent (BUS_CHANNEL_FD) and under Node
// (child_process.fork / spawn with an 'ipc' stdio: NODE_CHANNEL_FD).
//
// Exit status: 0 when the parent disconnects, 1 when the channel fails (bad input from the
// parent: the reason goes to stderr), 2 when there is no channel to the parent.
#include <bus/channel.hpp>

#include <cstdio>

int main() {
    boost::asio::io_context io;
    auto channel = bus::Channel::from_parent(io);
    if (!channel) {
        std::fprintf(stderr, "bus-echo: %s\n", channel.error().message().c_str());
        return 2;
    }
    auto& ch = channel.value();
    int status = 0;
    ch->on_message(
        [&ch](bus::Message& message) { ch->send(message.envelope(), std::move(message.fds)); });
    ch->on_disconnect([&status](std::error_code ec) {
        if (ec) {
            std::fprintf(stderr, "bus-echo: channel failed: %s\n", ec.message().c_str());
            status = 1;
        }
    });
    io.run();
    return status;
}
