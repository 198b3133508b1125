// The stream frame decoder and Envelope parsing, fed in chunks whose sizes the input chooses.
#include "../support/feed.hpp"

#include <bus/frame.hpp>
#include <bus/v1/envelope.pb.h>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1)
        return 0;
    const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
    bus::frame::Decoder decoder(4096);
    bus::v1::Envelope envelope, header;
    // An error (a length over the limit) ends the stream, as the channel treats it.
    bus::test::feed_in_chunks(decoder, bytes, 1 + data[0] % 64, [&](std::string_view frame) {
        if (frame.size() > 4096)
            __builtin_trap();
        const bool parsed = envelope.ParseFromArray(frame.data(), static_cast<int>(frame.size()));
        // What split() accepts, protobuf accepts too, with the same payload and header.
        auto payload = bus::frame::split(frame, header);
        if (payload) {
            if (!parsed || envelope.payload() != payload.value())
                __builtin_trap();
            std::string again;
            bus::frame::append_split(again, header, payload.value());
            envelope.clear_payload();
            if (envelope.SerializeAsString() != header.SerializeAsString())
                __builtin_trap();
        }
    });
    return 0;
}
