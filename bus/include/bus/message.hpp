// A message as a Channel or a Client delivers it: its envelope's fields, and the file
// descriptors that travelled with it, owned.
//
// A delivered Message does not copy what the link read: its fields are views into the frame in
// the link's read buffer (frame::view), valid while the handler runs. Moving a Message makes
// the new one own its bytes, so a Message kept past its handler (moved into a queue, returned
// by a blocking call) stays valid. envelope() decodes the whole v1::Envelope (headers,
// deadline) on first use.
#pragma once

#include "bus/error.hpp"
#include "bus/frame.hpp"
#include "bus/unique_fd.hpp"
#include "bus/v1/envelope.pb.h"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace google::protobuf {
class Message;
}

namespace bus {

// type_url of messages that came from a Node peer: the payload is one JSON text.
inline constexpr std::string_view json_type_url = "application/json";

// `message` as bus writes protobuf messages in JSON everywhere (to a Node peer over a channel,
// the `bus` CLI's --json output): protobuf's JSON mapping with field names as in the .proto
// (snake_case), every field printed, defaults included (0, "", false, [], the enum's zero
// value), enums by name, 64-bit integers as strings (exact in JavaScript), bytes as base64.
// README, "Messages as JSON". std::errc::invalid_argument for a message protobuf's JSON
// mapping cannot hold (an Any of a type this program does not know).
Result<std::string> to_json(const google::protobuf::Message& message);

// How JSON carries a payload that is not text (`bus sub --json`, busd's inspector): base64, as
// RFC 4648 and protobuf's JSON mapping of bytes spell it.
std::string base64(std::string_view bytes);

// An envelope's kind as people read it: "publish", "request", "reply", "error", "direct",
// "event" ("kindN" for another).
std::string kind_name(v1::Kind kind);

class Message {
public:
    Message() = default;
    // A message holding `envelope` (the channel's Node messages, tests).
    explicit Message(v1::Envelope envelope, std::vector<UniqueFd> fds = {});
    Message(Message&& other) noexcept;
    Message& operator=(Message&& other) noexcept;

    // Views `body`, a frame's encoded Envelope, which must stay valid while this Message is
    // used (or until it is moved from). False when `body` is not an Envelope. For links.
    bool view(std::string_view body);

    v1::Kind kind() const noexcept { return static_cast<v1::Kind>(fields_.kind); }
    std::string_view subject() const noexcept { return fields_.subject; }
    std::string_view source() const noexcept { return fields_.source; }
    std::string_view type_url() const noexcept { return fields_.type_url; }
    std::string_view payload() const noexcept { return fields_.payload; }
    std::uint64_t id() const noexcept { return fields_.id; }
    std::uint64_t correlation_id() const noexcept { return fields_.correlation_id; }
    std::uint64_t subscription_id() const noexcept { return fields_.subscription_id; }
    std::uint32_t fd_count() const noexcept { return fields_.fd_count; }
    bool is_json() const noexcept { return type_url() == json_type_url; }

    // The whole envelope, headers and all; decoded on first use.
    const v1::Envelope& envelope() const;
    // The value of the header named `key` (the first, if sent twice), or empty when there is
    // none; a view into envelope(), which it decodes.
    std::string_view header(std::string_view key) const;

    // Decodes the payload into `out`: protobuf binary, or protobuf's JSON mapping when the
    // message came from a Node peer. errc::wrong_type when the envelope names another type or
    // the bytes do not parse as `out`'s type; then `why`, if given, says which: the type the
    // message is, or (JSON) the field protobuf refused and why.
    std::error_code parse(google::protobuf::Message& out, std::string* why = nullptr) const;

    template <class T>
    Result<T> as() const {
        T out;
        if (auto ec = parse(out))
            return ec;
        return out;
    }

    std::vector<UniqueFd> fds;

private:
    void point_into_envelope();

    frame::EnvelopeView fields_;
    // The encoded envelope the views point into: the link's buffer, owned_, or nothing when
    // the views point into envelope_ (decoded_ from the start).
    std::string_view body_;
    std::string owned_;
    mutable v1::Envelope envelope_;
    mutable bool decoded_ = false;
};

} // namespace bus
