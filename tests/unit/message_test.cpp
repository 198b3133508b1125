// bus::Message: a delivered message views the frame it was read from; one that is moved owns
// its bytes; envelope() decodes the whole of it.
#include <bus/frame.hpp>
#include <bus/message.hpp>
#include <bus/v1/cluster.pb.h>
#include <bus/v1/envelope.pb.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>

namespace {

bus::v1::Envelope sample() {
    bus::v1::Envelope e;
    e.set_kind(bus::v1::KIND_PUBLISH);
    e.set_subject("orders.eu.created");
    e.set_type_url("type.googleapis.com/bus.v1.Heartbeat");
    e.set_source("c-7");
    e.set_payload(std::string(100, 'p'));
    e.set_id(5);
    e.set_correlation_id(6);
    e.set_subscription_id(7);
    e.set_deadline_unix_ns(123);
    auto* h = e.add_headers();
    h->set_key("trace");
    h->set_value("abc");
    return e;
}

void expect_fields(const bus::Message& m, const bus::v1::Envelope& e) {
    EXPECT_EQ(m.kind(), e.kind());
    EXPECT_EQ(m.subject(), e.subject());
    EXPECT_EQ(m.type_url(), e.type_url());
    EXPECT_EQ(m.source(), e.source());
    EXPECT_EQ(m.payload(), e.payload());
    EXPECT_EQ(m.id(), e.id());
    EXPECT_EQ(m.correlation_id(), e.correlation_id());
    EXPECT_EQ(m.subscription_id(), e.subscription_id());
    EXPECT_EQ(m.envelope().SerializeAsString(), e.SerializeAsString());
}

TEST(Message, ViewsTheFrameWithoutCopyingIt) {
    const auto e = sample();
    const std::string body = e.SerializeAsString();
    bus::Message m;
    ASSERT_TRUE(m.view(body));
    expect_fields(m, e);
    // The payload is the frame's own bytes.
    EXPECT_GE(m.payload().data(), body.data());
    EXPECT_LE(m.payload().data() + m.payload().size(), body.data() + body.size());
}

TEST(Message, HeaderFindsTheFirstOfItsNameOrNothing) {
    auto e = sample();
    auto* again = e.add_headers();
    again->set_key("trace");
    again->set_value("second");
    const std::string body = e.SerializeAsString();
    bus::Message m;
    ASSERT_TRUE(m.view(body));
    EXPECT_EQ(m.header("trace"), "abc");
    EXPECT_EQ(m.header("absent"), "");
    EXPECT_EQ(m.header(""), "");
}

TEST(Message, AMovedMessageOwnsItsBytesOnceTheFrameIsGone) {
    const auto e = sample();
    auto body = std::make_unique<std::string>(e.SerializeAsString());
    bus::Message delivered;
    ASSERT_TRUE(delivered.view(*body));
    bus::Message kept = std::move(delivered);
    std::fill(body->begin(), body->end(), 'x'); // the link reuses its buffer...
    body.reset();                               // ... or frees it (ASan sees any stale view)
    expect_fields(kept, e);
    bus::Message again;
    again = std::move(kept); // and moving an owning message keeps it whole
    expect_fields(again, e);
}

TEST(Message, ReusedForTheNextFrameShowsOnlyThatFrame) {
    bus::Message m;
    const std::string first = sample().SerializeAsString();
    ASSERT_TRUE(m.view(first));
    (void)m.envelope(); // decoded once...
    bus::v1::Envelope e;
    e.set_kind(bus::v1::KIND_REPLY);
    e.set_payload("second");
    const std::string second = e.SerializeAsString();
    ASSERT_TRUE(m.view(second)); // ... and not kept for the next frame
    expect_fields(m, e);
    EXPECT_TRUE(m.subject().empty());
}

// What frame::view leaves to protobuf (here an unknown field) is decoded by protobuf, and the
// fields point into what it decoded, moved or not.
TEST(Message, AFrameOnlyProtobufReadsIsDecodedByProtobuf) {
    auto e = sample();
    std::string body = e.SerializeAsString();
    body += std::string("\xa0\x06\x01", 3); // field 100, varint 1: unknown to an Envelope
    auto decode = [&] {
        bus::Message m;
        EXPECT_TRUE(m.view(body));
        EXPECT_EQ(m.subject(), e.subject());
        EXPECT_EQ(m.payload(), e.payload());
        bus::Message moved = std::move(m);
        return moved; // and the original destroyed (ASan sees any view left in it)
    };
    bus::Message kept = decode();
    body.assign(body.size(), 'x');
    EXPECT_EQ(kept.subject(), e.subject());
    EXPECT_EQ(kept.payload(), e.payload());
    EXPECT_EQ(kept.envelope().headers(0).value(), "abc");
}

TEST(MessageJson, ProtoNamesEveryFieldEnumNamesAnd64BitStrings) {
    // What `bus sub --json` prints and a Node peer receives (README, "Messages as JSON").
    bus::v1::Envelope e;
    e.set_kind(bus::v1::KIND_PUBLISH);
    e.set_deadline_unix_ns(1234567890123456789);
    e.set_subject("orders.new");
    auto json = bus::to_json(e);
    ASSERT_TRUE(json);
    EXPECT_EQ(json.value(),
              R"({"kind":"KIND_PUBLISH","subject":"b3JkZXJzLm5ldw==","type_url":"","payload":"",)"
              R"("id":"0","correlation_id":"0","reply_to":"","source":"",)"
              R"("deadline_unix_ns":"1234567890123456789","headers":[],"fd_count":0,)"
              R"("subscription_id":"0","monitored_kind":"KIND_UNSPECIFIED"})");
}

TEST(Message, RefusesWhatIsNotAnEnvelope) {
    bus::Message m;
    EXPECT_FALSE(m.view(std::string("\x12\x50short", 7))); // a length past the end
    EXPECT_TRUE(m.subject().empty());
    EXPECT_TRUE(m.payload().empty());
}

TEST(Message, BuiltFromAnEnvelopeAndMoved) {
    const auto e = sample();
    auto build = [&] {
        bus::Message m(e);
        expect_fields(m, e);
        bus::Message moved = std::move(m);
        return moved;
    };
    bus::Message kept = build();
    expect_fields(kept, e);
}

// wrong_type says why: the type the message is, the bytes that do not parse, or (JSON from a
// Node peer) the field protobuf refused.
TEST(Message, WrongTypeSaysWhatTheMessageIsOrWhichFieldFailed) {
    bus::v1::Shutdown shutdown;
    std::string why;
    bus::Message typed(sample()); // a bus.v1.Heartbeat, says its type URL
    EXPECT_EQ(typed.parse(shutdown, &why), bus::errc::wrong_type);
    EXPECT_EQ(why, "a bus.v1.Heartbeat, not a bus.v1.Shutdown");

    auto e = sample();
    e.clear_type_url();
    e.set_payload("\xff\xff\xff");
    bus::Message garbage(e);
    bus::v1::Heartbeat beat;
    EXPECT_EQ(garbage.parse(beat, &why), bus::errc::wrong_type);
    EXPECT_EQ(why, "3 bytes that do not parse as a bus.v1.Heartbeat");

    e.set_type_url(std::string(bus::json_type_url));
    e.set_payload(R"({"seq":"not a number"})");
    bus::Message json(e);
    EXPECT_EQ(json.parse(beat, &why), bus::errc::wrong_type);
    EXPECT_NE(why.find("seq"), std::string::npos) << why;
    EXPECT_TRUE(why.starts_with("JSON that is not a bus.v1.Heartbeat: ")) << why;

    e.set_payload(R"({"seq":"42"})");
    bus::Message good(e);
    why.clear();
    EXPECT_FALSE(good.parse(beat, &why));
    EXPECT_EQ(beat.seq(), 42u);
    EXPECT_EQ(why, "");
}

} // namespace
