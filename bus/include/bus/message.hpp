// A message as a Channel (or later a Client) delivers it: the envelope, and the file
// descriptors that travelled with it, owned.
#pragma once

#include "bus/error.hpp"
#include "bus/unique_fd.hpp"
#include "bus/v1/envelope.pb.h"

#include <string_view>
#include <vector>

namespace google::protobuf {
class Message;
}

namespace bus {

// type_url of messages that came from a Node peer: the payload is one JSON text.
inline constexpr std::string_view json_type_url = "application/json";

struct Message {
    v1::Envelope envelope;
    std::vector<UniqueFd> fds;

    std::string_view payload() const noexcept { return envelope.payload(); }
    bool is_json() const noexcept { return envelope.type_url() == json_type_url; }

    // Decodes the payload into `out`: protobuf binary, or protobuf's JSON mapping when the
    // message came from a Node peer. errc::wrong_type when the envelope names another type or
    // the bytes do not parse as `out`'s type.
    std::error_code parse(google::protobuf::Message& out) const;

    template <class T>
    Result<T> as() const {
        T out;
        if (auto ec = parse(out))
            return ec;
        return out;
    }
};

} // namespace bus
