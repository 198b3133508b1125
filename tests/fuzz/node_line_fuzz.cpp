// Node's 'json' IPC: line splitting and the classification of each line.
#include <bus/frame.hpp>

#include <cstring>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1)
        return 0;
    const std::size_t chunk = 1 + data[0] % 64;
    ++data;
    --size;
    bus::frame::LineDecoder decoder(4096);
    for (std::size_t at = 0; at < size; at += chunk) {
        const std::size_t n = std::min(chunk, size - at);
        auto space = decoder.prepare(n);
        std::memcpy(space.data(), data + at, n);
        decoder.commit(n);
        for (;;) {
            auto line = decoder.next();
            if (!line)
                return 0;
            if (!line.value())
                break;
            if (line.value()->find('\n') != std::string_view::npos)
                __builtin_trap();
            auto parsed = bus::frame::parse_node_line(*line.value());
            if (parsed && parsed.value().kind == bus::frame::NodeLine::Kind::user &&
                parsed.value().payload != *line.value())
                __builtin_trap();
        }
    }
    return 0;
}
