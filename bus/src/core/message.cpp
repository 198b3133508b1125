#include "bus/message.hpp"

#include "bus/frame.hpp"

#include <google/protobuf/util/json_util.h>

namespace bus {

std::error_code Message::parse(google::protobuf::Message& out) const {
    const auto& url = envelope.type_url();
    if (is_json()) {
        google::protobuf::util::JsonParseOptions options;
        options.ignore_unknown_fields = true; // Node peers add fields freely
        const auto status =
            google::protobuf::util::JsonStringToMessage(std::string(payload()), &out, options);
        return status.ok() ? std::error_code{} : make_error_code(errc::wrong_type);
    }
    if (!url.empty()) {
        const std::string_view name = std::string_view(url).substr(
            url.starts_with(frame::type_url_prefix) ? frame::type_url_prefix.size() : 0);
        if (name != out.GetDescriptor()->full_name())
            return errc::wrong_type;
    }
    if (!out.ParseFromString(envelope.payload()))
        return errc::wrong_type;
    return {};
}

} // namespace bus
