// The stream frame decoder and Envelope parsing (frame::parse, view and split against
// protobuf's own parser), fed in chunks whose sizes the input chooses;
// and the same bytes taken as a ZeroMQ message of whole frames (take_frame).
#include "../support/feed.hpp"

#include <bus/frame.hpp>
#include <bus/v1/envelope.pb.h>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1)
        return 0;
    const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
    bus::frame::Decoder decoder(4096);
    bus::v1::Envelope envelope, header, fast;
    // An error (a length over the limit) ends the stream, as the channel treats it.
    bus::test::feed_in_chunks(decoder, bytes, 1 + data[0] % 64, [&](std::string_view frame) {
        if (frame.size() > 4096)
            __builtin_trap();
        const bool parsed = envelope.ParseFromArray(frame.data(), static_cast<int>(frame.size()));
        // frame::parse() (fields read by hand) agrees with protobuf on every input, into an
        // Envelope reused from the frame before, as the channel reuses one.
        if (bus::frame::parse(frame, fast) != parsed ||
            (parsed && fast.SerializeAsString() != envelope.SerializeAsString()))
            __builtin_trap();
        // What view() reads, parse() reads by hand too, to the same fields, and the views
        // point into the frame.
        bus::frame::EnvelopeView view;
        if (bus::frame::view(frame, view)) {
            auto inside = [&](std::string_view v) {
                return v.empty() || (v.data() >= frame.data() &&
                                     v.data() + v.size() <= frame.data() + frame.size());
            };
            if (!parsed || view.kind != fast.kind() ||
                view.monitored_kind != fast.monitored_kind() || view.fd_count != fast.fd_count() ||
                view.id != fast.id() || view.correlation_id != fast.correlation_id() ||
                view.subscription_id != fast.subscription_id() ||
                view.deadline_unix_ns != fast.deadline_unix_ns() ||
                view.subject != fast.subject() || view.type_url != fast.type_url() ||
                view.payload != fast.payload() || view.reply_to != fast.reply_to() ||
                view.source != fast.source() || view.has_headers != (fast.headers_size() > 0) ||
                !inside(view.subject) || !inside(view.type_url) || !inside(view.payload) ||
                !inside(view.reply_to) || !inside(view.source))
                __builtin_trap();
        }
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
    // The same bytes as one ZeroMQ message of whole frames: take_frame() stays inside it and
    // within the limit, and stops at the first frame that does not fit.
    std::string_view frames = bytes;
    while (!frames.empty()) {
        const std::size_t before = frames.size();
        auto body = bus::frame::take_frame(frames, 4096);
        if (!body)
            break;
        const auto* end = body.value().data() + body.value().size();
        if (body.value().size() > 4096 || body.value().data() < bytes.data() ||
            end > bytes.data() + bytes.size() || frames.size() != before - 4 - body.value().size())
            __builtin_trap();
    }
    return 0;
}
