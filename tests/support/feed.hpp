// Feeds bytes to an incremental decoder (frame::Decoder or frame::LineDecoder) in chunks of a
// chosen size, as reads from a socket would, and hands each decoded item to `on_item`.
// Returns the decoder's error, if it reported one.
#pragma once

#include <algorithm>
#include <cstring>
#include <string_view>
#include <system_error>

namespace bus::test {

template <class Decoder, class OnItem>
std::error_code feed_in_chunks(Decoder& decoder, std::string_view bytes, std::size_t chunk,
                               OnItem on_item) {
    for (std::size_t at = 0; at < bytes.size(); at += chunk) {
        const std::size_t n = std::min(chunk, bytes.size() - at);
        auto space = decoder.prepare(n);
        std::memcpy(space.data(), bytes.data() + at, n);
        decoder.commit(n);
        for (;;) {
            auto next = decoder.next();
            if (!next)
                return next.error();
            if (!next.value())
                break;
            on_item(*next.value());
        }
    }
    return {};
}

} // namespace bus::test
