// Uses the installed headers, the library and a type of the project's own (tick.proto, which
// embeds one of bus's): a channel pair carries a Tick, which proves all of them are there, link,
// and that the receiver decodes the user's type by name.
#include "consumer/v1/tick.pb.h"

#include <bus/channel.hpp>

#include <cstdio>
#include <string>

int main() {
    boost::asio::io_context io;
    auto [a, b] = bus::Channel::pair(io).value();
    std::string note;
    std::uint64_t seq = 0;
    b->on_message([&](bus::Message& m) {
        if (auto tick = m.as<consumer::v1::Tick>()) {
            note = tick.value().note();
            seq = tick.value().beat().seq();
        }
        b->disconnect();
    });
    consumer::v1::Tick tick;
    tick.set_note("from outside");
    tick.mutable_beat()->set_seq(1234);
    a->send(tick);
    a->close();
    io.run();
    std::printf("consumer got '%s', seq %llu\n", note.c_str(),
                static_cast<unsigned long long>(seq));
    return note == "from outside" && seq == 1234 ? 0 : 1;
}
