// Uses the installed headers, the generated protobuf types and the library: a channel pair
// carries a typed message, which proves all three are there and link.
#include <bus/channel.hpp>
#include <bus/v1/cluster.pb.h>

#include <cstdio>

int main() {
    boost::asio::io_context io;
    auto [a, b] = bus::Channel::pair(io).value();
    std::uint64_t seq = 0;
    b->on_message([&](bus::Message& m) {
        if (auto beat = m.as<bus::v1::Heartbeat>())
            seq = beat.value().seq();
        b->disconnect();
    });
    bus::v1::Heartbeat beat;
    beat.set_seq(1234);
    a->send(beat);
    a->close();
    io.run();
    std::printf("consumer got seq %llu\n", static_cast<unsigned long long>(seq));
    return seq == 1234 ? 0 : 1;
}
