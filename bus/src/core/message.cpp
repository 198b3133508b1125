#include "bus/message.hpp"

#include <google/protobuf/util/json_util.h>

#include <limits>
#include <utility>

namespace bus {

Message::Message(v1::Envelope envelope, std::vector<UniqueFd> fds_in)
    : fds(std::move(fds_in)), envelope_(std::move(envelope)), decoded_(true) {
    point_into_envelope();
}

// The views follow the bytes: those into the other's body are rebased onto owned_ (a copy,
// or the other's own string moved), those into its envelope_ stay valid because protobuf
// moves a message's strings by pointer.
Message::Message(Message&& other) noexcept {
    *this = std::move(other);
}

Message& Message::operator=(Message&& other) noexcept {
    if (this == &other)
        return *this;
    fds = std::move(other.fds);
    fields_ = other.fields_;
    envelope_ = std::move(other.envelope_);
    decoded_ = std::exchange(other.decoded_, false);
    const std::string_view old = other.body_;
    if (old.data() == other.owned_.data())
        owned_ = std::move(other.owned_);
    else
        owned_.assign(old);
    body_ = old.data() ? std::string_view(owned_) : std::string_view();
    auto rebase = [&](std::string_view& v) {
        if (v.data() >= old.data() && v.data() + v.size() <= old.data() + old.size() && old.data())
            v = std::string_view(owned_.data() + (v.data() - old.data()), v.size());
    };
    for (auto* v : {&fields_.subject, &fields_.type_url, &fields_.payload, &fields_.reply_to,
                    &fields_.source})
        rebase(*v);
    other.fields_ = {};
    other.body_ = {};
    return *this;
}

bool Message::view(std::string_view body) {
    body_ = body;
    decoded_ = false;
    if (frame::view(body, fields_))
        return true;
    // Anything else (unknown fields, long varints) only protobuf decodes; the views then point
    // into what it decoded.
    if (body.size() > static_cast<std::size_t>(std::numeric_limits<int>::max()) ||
        !envelope_.ParseFromArray(body.data(), static_cast<int>(body.size()))) {
        fields_ = {};
        body_ = {};
        return false;
    }
    decoded_ = true;
    point_into_envelope();
    return true;
}

void Message::point_into_envelope() {
    const auto& e = envelope_;
    fields_.kind = e.kind();
    fields_.monitored_kind = e.monitored_kind();
    fields_.fd_count = e.fd_count();
    fields_.id = e.id();
    fields_.correlation_id = e.correlation_id();
    fields_.subscription_id = e.subscription_id();
    fields_.deadline_unix_ns = e.deadline_unix_ns();
    fields_.subject = e.subject();
    fields_.type_url = e.type_url();
    fields_.payload = e.payload();
    fields_.reply_to = e.reply_to();
    fields_.source = e.source();
    fields_.has_headers = e.headers_size() > 0;
}

const v1::Envelope& Message::envelope() const {
    if (!decoded_) {
        // view() read these bytes by hand, so protobuf reads them too.
        if (!envelope_.ParseFromArray(body_.data(), static_cast<int>(body_.size())))
            envelope_.Clear();
        decoded_ = true;
    }
    return envelope_;
}

std::string_view Message::header(std::string_view key) const {
    for (const auto& h : envelope().headers())
        if (h.key() == key)
            return h.value();
    return {};
}

std::string base64(std::string_view bytes) {
    static const char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    std::size_t i = 0;
    for (; i + 2 < bytes.size(); i += 3) {
        const unsigned v = (static_cast<unsigned char>(bytes[i]) << 16) |
                           (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                           static_cast<unsigned char>(bytes[i + 2]);
        out += table[v >> 18];
        out += table[(v >> 12) & 63];
        out += table[(v >> 6) & 63];
        out += table[v & 63];
    }
    if (i + 1 == bytes.size()) {
        const unsigned v = static_cast<unsigned char>(bytes[i]) << 16;
        out += table[v >> 18];
        out += table[(v >> 12) & 63];
        out += "==";
    } else if (i + 2 == bytes.size()) {
        const unsigned v = (static_cast<unsigned char>(bytes[i]) << 16) |
                           (static_cast<unsigned char>(bytes[i + 1]) << 8);
        out += table[v >> 18];
        out += table[(v >> 12) & 63];
        out += table[(v >> 6) & 63];
        out += '=';
    }
    return out;
}

std::string kind_name(v1::Kind kind) {
    switch (kind) {
    case v1::KIND_PUBLISH:
        return "publish";
    case v1::KIND_REQUEST:
        return "request";
    case v1::KIND_REPLY:
        return "reply";
    case v1::KIND_ERROR:
        return "error";
    case v1::KIND_DIRECT:
        return "direct";
    case v1::KIND_EVENT:
        return "event";
    default:
        return "kind" + std::to_string(static_cast<int>(kind));
    }
}

Result<std::string> to_json(const google::protobuf::Message& message) {
    google::protobuf::util::JsonPrintOptions options;
    // Names as in the .proto: what a reader of the .proto looks for, and what `jq` filters in
    // scripts spell; protobuf's parser (Message::parse) takes them and lowerCamelCase alike.
    options.preserve_proto_field_names = true;
    // Every field: a JavaScript reader need not guess a missing key's default, and an
    // inspector shows what is there (decisions 43 and 62).
    options.always_print_primitive_fields = true;
    std::string out;
    if (const auto status = google::protobuf::util::MessageToJsonString(message, &out, options);
        !status.ok())
        return std::make_error_code(std::errc::invalid_argument);
    return out;
}

std::error_code Message::parse(google::protobuf::Message& out, std::string* why) const {
    const std::string_view url = type_url();
    const std::string& expected = out.GetDescriptor()->full_name();
    auto refuse = [&](std::string reason) {
        if (why)
            *why = std::move(reason);
        return make_error_code(errc::wrong_type);
    };
    if (is_json()) {
        google::protobuf::util::JsonParseOptions options;
        options.ignore_unknown_fields = true; // Node peers add fields freely
        const auto status =
            google::protobuf::util::JsonStringToMessage(std::string(payload()), &out, options);
        if (!status.ok()) // its message names the field: "(seq): invalid value ..."
            return refuse("JSON that is not a " + expected + ": " + std::string(status.message()));
        return {};
    }
    if (!url.empty()) {
        const std::string_view name =
            url.substr(url.starts_with(frame::type_url_prefix) ? frame::type_url_prefix.size() : 0);
        if (name != expected)
            return refuse("a " + std::string(name) + ", not a " + expected);
    }
    if (payload().size() > static_cast<std::size_t>(std::numeric_limits<int>::max()) ||
        !out.ParseFromArray(payload().data(), static_cast<int>(payload().size())))
        return refuse(std::to_string(payload().size()) + " bytes that do not parse as a " +
                      expected);
    return {};
}

} // namespace bus
