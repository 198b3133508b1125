#include "bus/frame.hpp"

#include "bus/v1/envelope.pb.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <limits>

namespace bus::frame {
namespace {

using google::protobuf::io::CodedOutputStream;
using WFL = google::protobuf::internal::WireFormatLite;

void write_header(char* out, std::uint32_t n) noexcept {
    out[0] = static_cast<char>(n & 0xff);
    out[1] = static_cast<char>((n >> 8) & 0xff);
    out[2] = static_cast<char>((n >> 16) & 0xff);
    out[3] = static_cast<char>((n >> 24) & 0xff);
}

std::uint32_t read_header(const char* in) noexcept {
    auto b = [in](int i) { return static_cast<std::uint32_t>(static_cast<unsigned char>(in[i])); };
    return b(0) | (b(1) << 8) | (b(2) << 16) | (b(3) << 24);
}

std::size_t delimited_size(std::size_t n) {
    return 1 + CodedOutputStream::VarintSize32(static_cast<std::uint32_t>(n)) + n;
}

std::uint8_t* write_delimited_header(int field, std::size_t n, std::uint8_t* p) {
    p = WFL::WriteTagToArray(field, WFL::WIRETYPE_LENGTH_DELIMITED, p);
    return CodedOutputStream::WriteVarint32ToArray(static_cast<std::uint32_t>(n), p);
}

// Writes the fields of a DATA envelope around a payload of `payload_size` bytes that the
// caller serializes at the returned pointer; `type_name` (may be empty) is written after the
// type URL prefix. Fields in field-number order, as protobuf itself writes them.
template <class WritePayload>
void append_data(std::string& out, std::string_view type_name, std::size_t payload_size,
                 std::uint32_t fd_count, WritePayload write_payload) {
    const std::size_t url_size = type_name.empty() ? 0 : type_url_prefix.size() + type_name.size();
    std::size_t body = 2; // kind = DATA: tag 1, varint 1
    if (url_size)
        body += delimited_size(url_size);
    if (payload_size)
        body += delimited_size(payload_size);
    if (fd_count)
        body += 1 + CodedOutputStream::VarintSize32(fd_count);

    const std::size_t start = out.size();
    out.resize(start + header_size + body);
    char* base = out.data() + start;
    write_header(base, static_cast<std::uint32_t>(body));
    auto* p = reinterpret_cast<std::uint8_t*>(base + header_size);
    p = WFL::WriteEnumToArray(1, v1::KIND_DATA, p);
    if (url_size) {
        p = write_delimited_header(3, url_size, p);
        std::memcpy(p, type_url_prefix.data(), type_url_prefix.size());
        p += type_url_prefix.size();
        std::memcpy(p, type_name.data(), type_name.size());
        p += type_name.size();
    }
    if (fd_count)
        p = WFL::WriteUInt32ToArray(11, fd_count, p);
    if (payload_size) {
        p = write_delimited_header(4, payload_size, p);
        write_payload(p);
    }
}

} // namespace

std::string type_url_of(const google::protobuf::Message& message) {
    std::string url(type_url_prefix);
    url += message.GetDescriptor()->full_name();
    return url;
}

void append(std::string& out, const v1::Envelope& envelope) {
    const std::size_t body = envelope.ByteSizeLong();
    const std::size_t start = out.size();
    out.resize(start + header_size + body);
    write_header(out.data() + start, static_cast<std::uint32_t>(body));
    envelope.SerializeWithCachedSizesToArray(
        reinterpret_cast<std::uint8_t*>(out.data() + start + header_size));
}

void append_message(std::string& out, const google::protobuf::Message& payload,
                    std::uint32_t fd_count) {
    const std::size_t size = payload.ByteSizeLong();
    append_data(out, payload.GetDescriptor()->full_name(), size, fd_count,
                [&](std::uint8_t* p) { return payload.SerializeWithCachedSizesToArray(p); });
}

void append_bytes(std::string& out, std::string_view bytes, std::uint32_t fd_count) {
    append_data(out, {}, bytes.size(), fd_count, [&](std::uint8_t* p) {
        std::memcpy(p, bytes.data(), bytes.size());
        return p + bytes.size();
    });
}

namespace {
// Writes the payload field after a header that ends at `p`.
void write_payload_field(std::uint8_t* p, std::string_view payload) {
    if (!payload.empty()) {
        p = write_delimited_header(4, payload.size(), p);
        std::memcpy(p, payload.data(), payload.size());
    }
}

std::size_t split_body_size(std::size_t header_bytes, std::size_t payload_size) {
    return header_bytes + (payload_size == 0 ? 0 : delimited_size(payload_size));
}
} // namespace

void append_split(std::string& out, const v1::Envelope& header, std::string_view payload) {
    const std::size_t body = split_body_size(header.ByteSizeLong(), payload.size());
    const std::size_t start = out.size();
    out.resize(start + header_size + body);
    write_header(out.data() + start, static_cast<std::uint32_t>(body));
    write_payload_field(header.SerializeWithCachedSizesToArray(
                            reinterpret_cast<std::uint8_t*>(out.data() + start + header_size)),
                        payload);
}

void append_split(std::string& out, std::string_view header, std::string_view payload) {
    const std::size_t body = split_body_size(header.size(), payload.size());
    const std::size_t start = out.size();
    out.resize(start + header_size + body);
    write_header(out.data() + start, static_cast<std::uint32_t>(body));
    std::memcpy(out.data() + start + header_size, header.data(), header.size());
    write_payload_field(
        reinterpret_cast<std::uint8_t*>(out.data() + start + header_size + header.size()), payload);
}

Result<std::string_view> take_frame(std::string_view& frames, std::size_t max_body) {
    if (frames.size() < header_size)
        return errc::bad_frame;
    const std::size_t n = read_header(frames.data());
    if (n > max_body || n > frames.size() - header_size)
        return errc::bad_frame;
    const auto body = frames.substr(header_size, n);
    frames.remove_prefix(header_size + n);
    return body;
}

namespace {
// Reads the varint at `p` (before `end`) of at most `max_bytes` bytes: the position after it,
// or nullptr if it is truncated or longer. split()'s walk takes protobuf's ten; parse_known()
// takes nine (below 2^63) and leaves longer ones, whose tenth byte protobuf reads by rules of
// its own, to protobuf.
inline const char* read_varint(const char* p, const char* end, std::uint64_t& value,
                               int max_bytes = 10) {
    if (p < end && !(*p & 0x80)) { // tags, small numbers and lengths: one byte
        value = static_cast<unsigned char>(*p);
        return p + 1;
    }
    value = 0;
    for (int shift = 0; shift < 7 * max_bytes && p < end; shift += 7) {
        const auto byte = static_cast<unsigned char>(*p++);
        value |= static_cast<std::uint64_t>(byte & 0x7f) << shift;
        if (!(byte & 0x80))
            return p;
    }
    return nullptr;
}

constexpr int short_varint = 9;

// A length-delimited field's length, checked against `end`: the position of its bytes, or
// nullptr.
inline const char* read_length(const char* p, const char* end, std::uint64_t& n) {
    if (!(p = read_varint(p, end, n, short_varint)) || n > static_cast<std::uint64_t>(end - p))
        return nullptr;
    return p;
}

constexpr std::uint64_t tag(int field, WFL::WireType type) {
    return static_cast<std::uint64_t>(field) << 3 | type;
}

// The fields an Envelope has, with the wire types protobuf writes for them, read the way
// protobuf reads them (the last of a repeated singular field wins; an enum or uint32 takes
// the varint's low bits, which is why values that do not fit are left to protobuf). Hands
// each field to `sink` (EnvelopeSink, ViewSink below); false at the first byte it does not
// know how to read, or that the sink refuses. The sink is then half-filled.
template <class Sink>
bool walk_known(std::string_view body, Sink& sink) {
    constexpr auto varint = WFL::WIRETYPE_VARINT, bytes = WFL::WIRETYPE_LENGTH_DELIMITED;
    const char* p = body.data();
    const char* const end = p + body.size();
    while (p < end) {
        std::uint64_t t, v;
        if (!(p = read_varint(p, end, t, short_varint)))
            return false;
        if ((t & 7) == bytes) {
            if (!(p = read_length(p, end, v)))
                return false;
            const std::string_view field(p, v);
            p += v;
            switch (t >> 3) {
            case 2:
            case 3:
            case 4:
            case 7:
            case 8:
                if (!sink.bytes(static_cast<int>(t >> 3), field))
                    return false;
                break;
            case 10: { // a Header: key = 1, value = 2
                std::string_view key, value;
                for (const char *h = field.data(), *const h_end = h + field.size(); h < h_end;) {
                    std::uint64_t n;
                    if (!(h = read_varint(h, h_end, t, short_varint)) ||
                        (t != tag(1, bytes) && t != tag(2, bytes)) ||
                        !(h = read_length(h, h_end, n)))
                        return false;
                    (t == tag(1, bytes) ? key : value) = std::string_view(h, n);
                    h += n;
                }
                sink.header(key, value);
                break;
            }
            default:
                return false;
            }
            continue;
        }
        if ((t & 7) != varint || !(p = read_varint(p, end, v, short_varint)))
            return false;
        switch (t >> 3) {
        case 1:
        case 13:
            if (v > 0x7fffffff)
                return false;
            break;
        case 11:
            if (v > 0xffffffff)
                return false;
            break;
        case 5:
        case 6:
        case 9:
        case 12:
            break;
        default:
            return false;
        }
        sink.number(static_cast<int>(t >> 3), v);
    }
    return true;
}

// Into a v1::Envelope, whose strings keep their capacity (a reused Envelope parses without
// allocating). With `payload`, the payload field is not copied but returned there, a view
// into the body (split()); a second payload field is then refused.
struct EnvelopeSink {
    v1::Envelope& out;
    std::string_view* payload = nullptr;

    bool bytes(int field, std::string_view b) {
        switch (field) {
        case 2:
            out.mutable_subject()->assign(b); // (set_subject(p, n) builds a temporary string)
            break;
        case 3:
            out.mutable_type_url()->assign(b);
            break;
        case 4:
            if (!payload) {
                out.mutable_payload()->assign(b);
            } else {
                if (payload->data())
                    return false;
                *payload = b;
            }
            break;
        case 7:
            out.mutable_reply_to()->assign(b);
            break;
        case 8:
            out.mutable_source()->assign(b);
            break;
        }
        return true;
    }
    void header(std::string_view key, std::string_view value) {
        auto* h = out.add_headers();
        h->mutable_key()->assign(key);
        h->mutable_value()->assign(value);
    }
    void number(int field, std::uint64_t v) {
        switch (field) {
        case 1:
            return out.set_kind(static_cast<v1::Kind>(v));
        case 13:
            return out.set_monitored_kind(static_cast<v1::Kind>(v));
        case 5:
            return out.set_id(v);
        case 6:
            return out.set_correlation_id(v);
        case 9:
            return out.set_deadline_unix_ns(static_cast<std::int64_t>(v));
        case 11:
            return out.set_fd_count(static_cast<std::uint32_t>(v));
        case 12:
            return out.set_subscription_id(v);
        }
    }
};

struct ViewSink {
    EnvelopeView& out;

    bool bytes(int field, std::string_view b) {
        (field == 2   ? out.subject
         : field == 3 ? out.type_url
         : field == 4 ? out.payload
         : field == 7 ? out.reply_to
                      : out.source) = b;
        return true;
    }
    void header(std::string_view, std::string_view) { out.has_headers = true; }
    void number(int field, std::uint64_t v) {
        switch (field) {
        case 1:
            out.kind = static_cast<std::int32_t>(v);
            break;
        case 13:
            out.monitored_kind = static_cast<std::int32_t>(v);
            break;
        case 5:
            out.id = v;
            break;
        case 6:
            out.correlation_id = v;
            break;
        case 9:
            out.deadline_unix_ns = static_cast<std::int64_t>(v);
            break;
        case 11:
            out.fd_count = static_cast<std::uint32_t>(v);
            break;
        case 12:
            out.subscription_id = v;
            break;
        }
    }
};

bool parse_known(std::string_view body, v1::Envelope& out, std::string_view* payload = nullptr) {
    out.Clear();
    EnvelopeSink sink{out, payload};
    return walk_known(body, sink);
}
} // namespace

bool parse(std::string_view body, v1::Envelope& envelope) {
    if (parse_known(body, envelope))
        return true;
    return body.size() <= static_cast<std::size_t>(std::numeric_limits<int>::max()) &&
           envelope.ParseFromArray(body.data(), static_cast<int>(body.size()));
}

bool view(std::string_view body, EnvelopeView& out) {
    out = EnvelopeView{};
    ViewSink sink{out};
    return walk_known(body, sink);
}

Result<std::string_view> split(std::string_view body, v1::Envelope& header) {
    // The common case in one pass: an Envelope's own fields, one payload.
    std::string_view payload{};
    if (parse_known(body, header, &payload))
        return payload;
    // Anything else: find the payload field by walking the tags, then let protobuf parse the
    // header as the bytes around it. Groups (wire types 3 and 4) are not part of an Envelope
    // and are refused, and so is a second payload.
    const char* const begin = body.data();
    const char* const end = begin + body.size();
    std::size_t field_begin = body.size(), field_end = body.size();
    payload = {};
    bool seen = false;
    for (const char* p = begin; p < end;) {
        const char* const at = p;
        std::uint64_t tag, n;
        if (!(p = read_varint(p, end, tag)) || (tag >> 3) == 0 || (tag >> 3) > 0x1fffffff)
            return errc::bad_frame;
        switch (tag & 7) {
        case WFL::WIRETYPE_VARINT:
            if ((tag >> 3) == 4 || !(p = read_varint(p, end, n)))
                return errc::bad_frame;
            break;
        case WFL::WIRETYPE_FIXED64:
            if ((tag >> 3) == 4 || end - p < 8)
                return errc::bad_frame;
            p += 8;
            break;
        case WFL::WIRETYPE_FIXED32:
            if ((tag >> 3) == 4 || end - p < 4)
                return errc::bad_frame;
            p += 4;
            break;
        case WFL::WIRETYPE_LENGTH_DELIMITED:
            if (!(p = read_varint(p, end, n)) || n > static_cast<std::uint64_t>(end - p))
                return errc::bad_frame;
            if ((tag >> 3) == 4) {
                if (seen)
                    return errc::bad_frame;
                seen = true;
                field_begin = static_cast<std::size_t>(at - begin);
                field_end = static_cast<std::size_t>(p - begin) + n;
                payload = std::string_view(p, n);
            }
            p += n;
            break;
        default:
            return errc::bad_frame;
        }
    }
    bool parsed;
    if (field_end == body.size()) {
        parsed = parse(body.substr(0, field_begin), header);
    } else {
        // The payload sits between header fields: parse the bytes around it.
        std::string rest(body.substr(0, field_begin));
        rest.append(body.substr(field_end));
        parsed = parse(rest, header);
    }
    if (!parsed)
        return errc::bad_frame;
    return payload;
}

std::span<char> ReadBuffer::prepare(std::size_t min_free) {
    if (begin_ == end_)
        begin_ = end_ = 0;
    if (buf_.size() - end_ < min_free) {
        // Compact first; grow only if the pending bytes plus the request do not fit.
        if (begin_ > 0) {
            std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
            end_ -= begin_;
            begin_ = 0;
        }
        if (buf_.size() - end_ < min_free)
            buf_.resize(std::max(end_ + min_free, buf_.size() * 2));
    }
    return {buf_.data() + end_, buf_.size() - end_};
}

void ReadBuffer::consume(std::size_t n) noexcept {
    begin_ += n;
    if (begin_ == end_)
        begin_ = end_ = 0;
}

std::span<char> Decoder::prepare(std::size_t hint) {
    const auto pending = buf_.data();
    std::size_t want = hint;
    if (pending.size() >= header_size) {
        const std::size_t frame = header_size + read_header(pending.data());
        if (frame <= header_size + max_frame_ && frame > pending.size())
            want = std::max(hint, frame - pending.size());
    }
    return buf_.prepare(want);
}

Result<std::optional<std::string_view>> Decoder::next() {
    const auto pending = buf_.data();
    if (pending.size() < header_size)
        return std::optional<std::string_view>{};
    const std::uint32_t n = read_header(pending.data());
    if (n > max_frame_)
        return errc::frame_too_large;
    if (pending.size() - header_size < n)
        return std::optional<std::string_view>{};
    buf_.consume(header_size + n);
    // consume() only moves offsets: the bytes stay put until the next prepare().
    return std::optional<std::string_view>{pending.substr(header_size, n)};
}

Result<std::optional<std::string_view>> LineDecoder::next() {
    const auto pending = buf_.data();
    const auto nl = pending.find('\n', scanned_);
    if (nl == std::string_view::npos) {
        scanned_ = pending.size();
        if (pending.size() > max_line_)
            return errc::frame_too_large;
        return std::optional<std::string_view>{};
    }
    if (nl > max_line_)
        return errc::frame_too_large;
    scanned_ = 0;
    buf_.consume(nl + 1);
    return std::optional<std::string_view>{pending.substr(0, nl)};
}

namespace {

// As Node's child_process: an object whose `cmd` is a string "NODE_" and more.
const std::string* internal_cmd(const nlohmann::json& json) {
    constexpr std::string_view prefix = "NODE_";
    if (!json.is_object())
        return nullptr;
    const auto cmd = json.find("cmd");
    if (cmd == json.end() || !cmd->is_string())
        return nullptr;
    const auto& name = cmd->get_ref<const std::string&>();
    return name.size() > prefix.size() && name.starts_with(prefix) ? &name : nullptr;
}

} // namespace

Result<NodeLine> parse_node_line(std::string_view line) {
    auto json = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded())
        return errc::bad_json;
    NodeLine out;
    const std::string* name = internal_cmd(json);
    if (!name) {
        out.payload.assign(line);
        return out;
    }
    if (*name == "NODE_HANDLE") {
        out.kind = NodeLine::Kind::handle;
        const auto msg = json.find("msg");
        out.payload = msg == json.end() ? "null" : msg->dump();
        out.internal = msg != json.end() && internal_cmd(*msg);
    } else if (*name == "NODE_HANDLE_ACK") {
        out.kind = NodeLine::Kind::handle_ack;
    } else if (*name == "NODE_HANDLE_NACK") {
        out.kind = NodeLine::Kind::handle_nack;
    } else {
        out.kind = NodeLine::Kind::internal;
        out.internal = true;
        out.payload.assign(line);
    }
    return out;
}

} // namespace bus::frame
