#include "../support/feed.hpp"

#include <bus/frame.hpp>
#include <bus/v1/cluster.pb.h>
#include <bus/v1/envelope.pb.h>

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace {

using bus::frame::Decoder;
using bus::frame::LineDecoder;

std::vector<std::string> decode_in_chunks(Decoder& decoder, const std::string& bytes,
                                          std::size_t chunk, std::error_code* error = nullptr) {
    std::vector<std::string> frames;
    auto ec = bus::test::feed_in_chunks(
        decoder, bytes, chunk, [&](std::string_view frame) { frames.emplace_back(frame); });
    if (error)
        *error = ec;
    return frames;
}

TEST(Frame, AppendWritesLittleEndianLengthThenEnvelope) {
    bus::v1::Envelope envelope;
    envelope.set_subject("orders.created");
    envelope.set_payload("hello");
    std::string out;
    bus::frame::append(out, envelope);
    const std::string body = envelope.SerializeAsString();
    ASSERT_EQ(out.size(), 4 + body.size());
    EXPECT_EQ(static_cast<unsigned char>(out[0]), body.size() & 0xff);
    EXPECT_EQ(out[1], 0);
    EXPECT_EQ(out.substr(4), body);
}

TEST(Frame, AppendMessageSerializesPayloadInPlace) {
    bus::v1::NewConn conn;
    conn.set_id(42);
    conn.set_peer_address("127.0.0.1:5555");
    std::string out;
    bus::frame::append_message(out, conn, 1);
    bus::v1::Envelope envelope;
    ASSERT_TRUE(envelope.ParseFromArray(out.data() + 4, static_cast<int>(out.size() - 4)));
    EXPECT_EQ(envelope.kind(), bus::v1::KIND_DATA);
    EXPECT_EQ(envelope.type_url(), "type.googleapis.com/bus.v1.NewConn");
    EXPECT_EQ(envelope.fd_count(), 1u);
    bus::v1::NewConn back;
    ASSERT_TRUE(back.ParseFromString(envelope.payload()));
    EXPECT_EQ(back.id(), 42u);
    EXPECT_EQ(back.peer_address(), "127.0.0.1:5555");
    // The same fields as protobuf's own serialization of the equivalent envelope, with the
    // payload last.
    bus::v1::Envelope expected;
    expected.set_kind(bus::v1::KIND_DATA);
    expected.set_type_url("type.googleapis.com/bus.v1.NewConn");
    expected.set_payload(conn.SerializeAsString());
    expected.set_fd_count(1);
    EXPECT_EQ(out.size() - 4, expected.ByteSizeLong());
    EXPECT_EQ(envelope.SerializeAsString(), expected.SerializeAsString());
    EXPECT_TRUE(std::string_view(out).ends_with(conn.SerializeAsString()));
}

TEST(Frame, SplitReturnsThePayloadInPlaceAndTheRestAsHeader) {
    bus::v1::Envelope full;
    full.set_kind(bus::v1::KIND_PUBLISH);
    full.set_subject("orders.eu");
    full.set_payload("the payload");
    full.set_id(77); // after the payload in field order: protobuf writes it after field 4
    auto* kv = full.add_headers();
    kv->set_key("k");
    kv->set_value("v");
    const std::string body = full.SerializeAsString();
    bus::v1::Envelope header;
    auto payload = bus::frame::split(body, header);
    ASSERT_TRUE(payload);
    EXPECT_EQ(payload.value(), "the payload");
    EXPECT_GE(payload.value().data(), body.data()); // a view into the body, not a copy
    EXPECT_LT(payload.value().data(), body.data() + body.size());
    EXPECT_TRUE(header.payload().empty());
    EXPECT_EQ(header.subject(), "orders.eu");
    EXPECT_EQ(header.id(), 77u);
    ASSERT_EQ(header.headers_size(), 1);
    EXPECT_EQ(header.headers(0).value(), "v");

    std::string forwarded;
    bus::frame::append_split(forwarded, header, payload.value());
    bus::v1::Envelope back;
    ASSERT_TRUE(back.ParseFromArray(forwarded.data() + 4, static_cast<int>(forwarded.size() - 4)));
    EXPECT_EQ(back.SerializeAsString(), full.SerializeAsString());
}

TEST(Frame, SplitRejectsMalformedBodies) {
    bus::v1::Envelope header;
    for (std::string bad :
         {std::string("\x22\x05"
                      "ab",
                      4), // payload longer than the body
          std::string("\x22\x01"
                      "a"
                      "\x22\x01"
                      "b",
                      6),                                         // two payloads
          std::string("\x21\x01", 2),                             // field 4 with a fixed64 type
          std::string("\x0a", 1),                                 // truncated tag's field
          std::string("\x00\x01", 2),                             // tag 0
          std::string("\x0b\x0c", 2),                             // a group: not an Envelope's
          std::string("\x28") + std::string(10, '\xff') + "\x01", // 11-byte varint
          std::string("\x4d\x01\x02", 3)}) {                      // a truncated fixed32
        EXPECT_FALSE(bus::frame::split(bad, header)) << testing::PrintToString(bad);
    }
    EXPECT_TRUE(bus::frame::split("", header)); // the empty envelope
}

// frame::parse() reads an Envelope's fields by hand and leaves anything else to protobuf: both
// kinds of input come out as protobuf's own parser makes them, into a reused Envelope.
TEST(Frame, ParseAgreesWithProtobufOnKnownAndOtherInput) {
    bus::v1::Envelope full;
    full.set_kind(bus::v1::KIND_REQUEST);
    full.set_subject("orders.eu");
    full.set_type_url("type.googleapis.com/x.Y");
    full.set_payload(std::string(300, 'p'));
    full.set_id(1);
    full.set_correlation_id(0x7fffffffffffffff); // nine bytes
    full.set_reply_to("r");
    full.set_source("c-1");
    full.set_deadline_unix_ns(1'800'000'000'000'000'000);
    full.set_fd_count(2);
    full.set_subscription_id(12);
    full.set_monitored_kind(bus::v1::KIND_REPLY);
    for (const char* k : {"a", "b"}) {
        auto* h = full.add_headers();
        h->set_key(k);
        h->set_value(std::string("value of ") + k);
    }
    bus::v1::Envelope with_big_id = full;
    with_big_id.set_id(~0ull); // a ten-byte varint: protobuf's parser reads it
    bus::v1::Envelope negative_deadline = full;
    negative_deadline.set_deadline_unix_ns(-5);
    bus::v1::Envelope reused; // parsed into over and over: nothing may stay from before
    for (const auto* e : {&full, &with_big_id, &negative_deadline, &full}) {
        const std::string body = e->SerializeAsString();
        ASSERT_TRUE(bus::frame::parse(body, reused));
        EXPECT_EQ(reused.SerializeAsString(), body);
    }
    ASSERT_TRUE(bus::frame::parse("", reused));
    EXPECT_EQ(reused.ByteSizeLong(), 0u);

    // An unknown field (99, varint) and a known field with another wire type (2 as varint):
    // protobuf keeps both as unknown fields, and so does parse().
    const std::string odd = full.SerializeAsString() + std::string("\x98\x06\x07\x10\x05", 5);
    bus::v1::Envelope expected;
    ASSERT_TRUE(expected.ParseFromString(odd));
    ASSERT_TRUE(bus::frame::parse(odd, reused));
    EXPECT_EQ(reused.SerializeAsString(), expected.SerializeAsString());
    EXPECT_EQ(reused.subject(), "orders.eu");

    // What protobuf refuses, parse() refuses.
    for (std::string bad : {std::string("\x12\x05"
                                        "ab",
                                        4), // subject longer than the body
                            std::string("\x52\x03\x0a\x05"
                                        "a",
                                        5),             // a header's key longer than the header
                            std::string("\x00\x01", 2), // tag 0
                            std::string("\x08") + std::string(10, '\xff') + "\x01"}) // 11 bytes
        EXPECT_FALSE(bus::frame::parse(bad, reused)) << testing::PrintToString(bad);
}

TEST(Frame, AppendBytesOfEmptyPayloadIsAValidEnvelope) {
    std::string out;
    bus::frame::append_bytes(out, "", 0);
    bus::v1::Envelope envelope;
    ASSERT_TRUE(envelope.ParseFromArray(out.data() + 4, static_cast<int>(out.size() - 4)));
    EXPECT_EQ(envelope.kind(), bus::v1::KIND_DATA);
    EXPECT_TRUE(envelope.payload().empty());
}

TEST(Frame, DecodesEveryFrameWhateverTheChunking) {
    std::string stream;
    std::vector<std::string> payloads;
    for (int i = 0; i < 50; ++i) {
        payloads.push_back(
            std::string(static_cast<std::size_t>(i * 37), static_cast<char>('a' + i % 26)));
        bus::frame::append_bytes(stream, payloads.back(), 0);
    }
    for (std::size_t chunk : {1u, 3u, 4u, 7u, 64u, 1000u, 100000u}) {
        Decoder decoder;
        auto frames = decode_in_chunks(decoder, stream, chunk);
        ASSERT_EQ(frames.size(), payloads.size()) << "chunk " << chunk;
        for (std::size_t i = 0; i < frames.size(); ++i) {
            bus::v1::Envelope envelope;
            ASSERT_TRUE(envelope.ParseFromString(frames[i]));
            EXPECT_EQ(envelope.payload(), payloads[i]);
        }
        EXPECT_FALSE(decoder.mid_frame());
    }
}

TEST(Frame, PartialFrameIsReportedAsMidFrame) {
    std::string stream;
    bus::frame::append_bytes(stream, "abcdef", 0);
    Decoder decoder;
    auto frames = decode_in_chunks(decoder, stream.substr(0, stream.size() - 1), 4);
    EXPECT_TRUE(frames.empty());
    EXPECT_TRUE(decoder.mid_frame());
}

TEST(Frame, LengthOverTheLimitIsAnError) {
    Decoder decoder(1024);
    std::string stream("\x01\x04\x00\x00", 4); // 1025
    std::error_code error;
    auto frames = decode_in_chunks(decoder, stream, 4, &error);
    EXPECT_TRUE(frames.empty());
    EXPECT_EQ(error, bus::errc::frame_too_large);
}

TEST(Frame, FrameAtTheLimitIsAccepted) {
    Decoder decoder(1024);
    std::string stream("\x00\x04\x00\x00", 4);
    stream.append(1024, 'x');
    std::error_code error;
    auto frames = decode_in_chunks(decoder, stream, 100, &error);
    EXPECT_FALSE(error);
    ASSERT_EQ(frames.size(), 1u);
    EXPECT_EQ(frames[0].size(), 1024u);
}

TEST(Frame, HugeLengthDoesNotAllocate) {
    Decoder decoder; // 16 MiB limit
    std::string stream("\xff\xff\xff\xff", 4);
    std::error_code error;
    decode_in_chunks(decoder, stream, 4, &error);
    EXPECT_EQ(error, bus::errc::frame_too_large);
    EXPECT_LT(decoder.prepare(1).size(), 1u << 20);
}

TEST(LineDecoder, SplitsLinesAcrossChunks) {
    const std::string text = "{\"a\":1}\n[2]\n\"three\"\n{\"partial\":";
    for (std::size_t chunk : {1u, 2u, 5u, 100u}) {
        LineDecoder decoder;
        std::vector<std::string> lines;
        auto ec = bus::test::feed_in_chunks(
            decoder, text, chunk, [&](std::string_view line) { lines.emplace_back(line); });
        EXPECT_FALSE(ec);
        EXPECT_EQ(lines, (std::vector<std::string>{"{\"a\":1}", "[2]", "\"three\""}));
        EXPECT_TRUE(decoder.mid_frame());
    }
}

TEST(LineDecoder, LineOverTheLimitIsAnError) {
    LineDecoder decoder(8);
    auto space = decoder.prepare(16);
    std::memcpy(space.data(), "123456789", 9);
    decoder.commit(9);
    auto next = decoder.next();
    ASSERT_FALSE(next);
    EXPECT_EQ(next.error(), bus::errc::frame_too_large);
}

} // namespace
