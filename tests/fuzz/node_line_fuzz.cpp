// Node's 'json' IPC: line splitting and the classification of each line.
#include "../support/feed.hpp"

#include <bus/frame.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1)
        return 0;
    const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
    bus::frame::LineDecoder decoder(4096);
    bus::test::feed_in_chunks(decoder, bytes, 1 + data[0] % 64, [](std::string_view line) {
        if (line.find('\n') != std::string_view::npos)
            __builtin_trap();
        auto parsed = bus::frame::parse_node_line(line);
        if (parsed && parsed.value().kind == bus::frame::NodeLine::Kind::user &&
            parsed.value().payload != line)
            __builtin_trap();
    });
    return 0;
}
