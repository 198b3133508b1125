// The cluster messages on a worker's channel: KIND_CONTROL envelopes whose type_url names a
// cluster.proto message (docs/cluster.md).
#pragma once

#include "bus/channel.hpp"
#include "bus/frame.hpp"

#include <google/protobuf/message.h>

namespace bus::cluster::detail {

inline bool send_control(Channel& channel, const google::protobuf::Message& message, Fds fds = {}) {
    v1::Envelope envelope;
    envelope.set_kind(v1::KIND_CONTROL);
    envelope.set_type_url(frame::type_url_of(message));
    message.SerializeToString(envelope.mutable_payload());
    return channel.send(envelope, std::move(fds));
}

// True when `message` is a control message carrying `T` (and parses as one).
template <class T>
bool control_is(const Message& message, T& out) {
    if (message.kind() != v1::KIND_CONTROL ||
        message.type_url() != frame::type_url_prefix.data() + T::descriptor()->full_name())
        return false;
    return !message.parse(out);
}

} // namespace bus::cluster::detail
