// The stream frame codec of DESIGN.md ("Wire formats"): u32 length, little-endian, then that
// many bytes of a serialized bus.v1.Envelope. Also the line codec of Node's 'json' IPC
// serialization (one JSON text per line), which shares the same incremental buffer.
//
// Everything here is a pure function of bytes: no sockets, no fds. That keeps it easy to test
// and to fuzz (tests/fuzz/). File descriptors are matched to frames by the Channel.
#pragma once

#include "bus/error.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace google::protobuf {
class Message;
}
namespace bus::v1 {
class Envelope;
}

namespace bus::frame {

inline constexpr std::size_t header_size = 4;
inline constexpr std::size_t default_max_frame = 16u << 20; // 16 MiB

// Prefix of type URLs, as google.protobuf.Any spells them.
inline constexpr std::string_view type_url_prefix = "type.googleapis.com/";

// The type URL of `message`'s type.
std::string type_url_of(const google::protobuf::Message& message);

// Appends one frame holding `envelope` (its fd_count as given) to `out`.
void append(std::string& out, const v1::Envelope& envelope);

// Appends one frame holding an envelope of kind DATA whose payload is `payload` serialized in
// place (no intermediate copy) and whose type_url names its type. The payload is written last
// (see split()).
void append_message(std::string& out, const google::protobuf::Message& payload,
                    std::uint32_t fd_count);

// Appends one frame holding an envelope of kind DATA whose payload is `bytes`.
void append_bytes(std::string& out, std::string_view bytes, std::uint32_t fd_count);

// Appends one frame holding `header` (whose own payload must be empty) with `payload` as its
// payload field, written last: how a router forwards a payload it never parsed.
void append_split(std::string& out, const v1::Envelope& header, std::string_view payload);
// The same with the header already serialized (a router serializes it once for all recipients).
void append_split(std::string& out, std::string_view header, std::string_view payload);

// Takes the first frame off `frames`, a buffer that holds whole frames only (a ZeroMQ message
// carries one or more): its body, or errc::bad_frame when `frames` does not start with a whole
// frame whose body is at most `max_body` bytes.
Result<std::string_view> take_frame(std::string_view& frames, std::size_t max_body);

// Parses a frame body into `envelope`, exactly as `envelope.ParseFromArray(body)` would (false
// where it would fail), in a fraction of the time: the fields of an Envelope are read by hand,
// and protobuf's parser takes over for anything else (unknown fields, varints of ten bytes).
// Every message a client receives and every header busd routes is parsed here.
bool parse(std::string_view body, v1::Envelope& envelope);

// An Envelope's fields as views into the body they were read from (no copy). Headers are
// not kept here: has_headers says the body has some (v1::Envelope has them all).
struct EnvelopeView {
    std::int32_t kind = 0; // a v1::Kind
    std::int32_t monitored_kind = 0;
    std::uint32_t fd_count = 0;
    std::uint64_t id = 0, correlation_id = 0, subscription_id = 0;
    std::int64_t deadline_unix_ns = 0;
    std::string_view subject, type_url, payload, reply_to, source;
    bool has_headers = false;
};

// Reads a frame body into `out`, when parse() would read it by hand (an Envelope's own fields,
// as protobuf writes them): the same fields parse() would give. False for anything else,
// which only protobuf's parser can decode (or refuse).
bool view(std::string_view body, EnvelopeView& out);

// Parses a frame body into `header` without its payload field, and returns the payload's bytes
// in place (a view into `body`). errc::bad_frame when the body is not a valid Envelope.
// Frames written here put the payload last, which makes this a parse of the bytes before it.
Result<std::string_view> split(std::string_view body, v1::Envelope& header);

// A growable read buffer that a reader fills in place (recvmsg straight into prepare()) and
// a decoder consumes from the front. Compacts lazily, so a read that brought many frames
// costs one memmove at most.
class ReadBuffer {
public:
    // Space to read into: at least `min_free` bytes (the buffer grows or compacts).
    std::span<char> prepare(std::size_t min_free);
    void commit(std::size_t n) noexcept { end_ += n; }
    std::string_view data() const noexcept { return {buf_.data() + begin_, end_ - begin_}; }
    void consume(std::size_t n) noexcept;
    bool empty() const noexcept { return begin_ == end_; }
    std::size_t capacity() const noexcept { return buf_.size(); }

private:
    std::vector<char> buf_;
    std::size_t begin_ = 0;
    std::size_t end_ = 0;
};

// Incremental decoder of length-prefixed frames.
class Decoder {
public:
    explicit Decoder(std::size_t max_frame = default_max_frame) : max_frame_(max_frame) {}

    // Where to read the next bytes: room for at least one whole pending frame when its length
    // is known, else `hint` bytes.
    std::span<char> prepare(std::size_t hint = 64 * 1024);
    void commit(std::size_t n) noexcept { buf_.commit(n); }

    // The body of the next complete frame, valid until the next prepare(); nullopt when none
    // is complete yet; errc::frame_too_large when a length prefix is over the limit (the
    // stream cannot be resynchronized after that: treat it as fatal).
    Result<std::optional<std::string_view>> next();

    // Bytes are buffered that do not make a whole frame (the peer stopped mid-frame).
    bool mid_frame() const noexcept { return !buf_.empty(); }

private:
    std::size_t max_frame_;
    ReadBuffer buf_;
};

// Incremental splitter of newline-terminated lines (Node's 'json' serialization).
class LineDecoder {
public:
    explicit LineDecoder(std::size_t max_line = default_max_frame) : max_line_(max_line) {}

    std::span<char> prepare(std::size_t hint = 64 * 1024) { return buf_.prepare(hint); }
    void commit(std::size_t n) noexcept { buf_.commit(n); }

    // The next complete line without its '\n'; nullopt when none; errc::frame_too_large when
    // more than `max_line` bytes arrived without a newline.
    Result<std::optional<std::string_view>> next();

    bool mid_frame() const noexcept { return !buf_.empty(); }

private:
    std::size_t max_line_;
    std::size_t scanned_ = 0; // bytes of the pending line already searched for '\n'
    ReadBuffer buf_;
};

// One line of Node's 'json' IPC, classified as Node's child_process does it: an object whose
// `cmd` is a string starting with "NODE_" (and longer than that) is internal.
struct NodeLine {
    enum class Kind {
        user,        // a user message: `payload` is the line itself
        handle,      // NODE_HANDLE: a passed handle; `payload` is its "msg" as JSON text
        handle_ack,  // NODE_HANDLE_ACK
        handle_nack, // NODE_HANDLE_NACK
        internal,    // any other NODE_ message (cluster's): `payload` is the line itself
    };
    Kind kind = Kind::user;
    std::string payload;
    // For `internal`, and for a `handle` whose "msg" is itself internal (the cluster's
    // newconn carries the connection that way): not for the user's message handler.
    bool internal = false;
};

// errc::bad_json when `line` is not exactly one JSON text.
Result<NodeLine> parse_node_line(std::string_view line);

} // namespace bus::frame
