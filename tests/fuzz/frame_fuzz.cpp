// The stream frame decoder and Envelope parsing, fed in chunks whose sizes the input chooses.
#include <bus/frame.hpp>
#include <bus/v1/envelope.pb.h>

#include <cstring>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1)
        return 0;
    const std::size_t chunk = 1 + data[0] % 64;
    ++data;
    --size;
    bus::frame::Decoder decoder(4096);
    bus::v1::Envelope envelope;
    for (std::size_t at = 0; at < size; at += chunk) {
        const std::size_t n = std::min(chunk, size - at);
        auto space = decoder.prepare(n);
        std::memcpy(space.data(), data + at, n);
        decoder.commit(n);
        for (;;) {
            auto frame = decoder.next();
            if (!frame)
                return 0; // over the limit: the stream is dead, as the channel treats it
            if (!frame.value())
                break;
            if (frame.value()->size() > 4096)
                __builtin_trap();
            if (envelope.ParseFromArray(frame.value()->data(),
                                        static_cast<int>(frame.value()->size()))) {
                std::string again;
                bus::frame::append(again, envelope);
                if (again.size() < 4)
                    __builtin_trap();
            }
        }
    }
    return 0;
}
