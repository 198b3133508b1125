// A C++ child for node_parent.test.js: sends its Node parent one protobuf message, for the test
// to check the JSON shape the README promises ("Messages as JSON"). The message has what that
// promise is about: an enum (kind), a 64-bit integer beyond JavaScript's 2^53 (deadline_unix_ns),
// snake_case names, and fields left at their defaults (correlation_id, fd_count, headers, ...).
//
// Exit status: 0 when the parent disconnects, 1 when the channel fails, 2 without a channel.
#include <bus/channel.hpp>
#include <bus/v1/envelope.pb.h>

#include <cstdio>

int main() {
    boost::asio::io_context io;
    auto channel = bus::Channel::from_parent(io);
    if (!channel) {
        std::fprintf(stderr, "json_shape_child: %s\n", channel.error().message().c_str());
        return 2;
    }
    auto& ch = channel.value();
    int status = 0;
    ch->on_disconnect([&status](std::error_code ec) { status = ec ? 1 : 0; });
    bus::v1::Envelope e;
    e.set_kind(bus::v1::KIND_PUBLISH);
    e.set_subject("orders.new");
    e.set_deadline_unix_ns(1234567890123456789);
    // As a protobuf message, not as an envelope to unwrap (Channel::send(const Envelope&)).
    ch->send(static_cast<const google::protobuf::Message&>(e));
    io.run();
    return status;
}
