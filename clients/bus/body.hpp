// Message bodies: how pub, req and serve say what the body they send is and encode it, and
// how a received payload is decoded and shown (one line of text, or a JSON object).
#pragma once

#include "connect.hpp"
#include "output.hpp"
#include "types.hpp"

#include <CLI/CLI.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bus::cli {

// How a command with a body (pub, req, serve) says what the body is: raw bytes, or JSON of a
// protobuf type found in --proto / --descriptor-set, the binary, or busd's registry.
struct BodyOptions {
    std::string type;
    std::string proto;
    std::vector<std::string> import_dirs;
    std::string descriptor_set;
};
void add_body_options(CLI::App& cmd, BodyOptions& o);
// Loads --proto / --descriptor-set into `types`.
void load_body_types(const BodyOptions& o, Types& types);
// The body argument, else stdin when it is not a terminal, else empty.
std::string read_body(const std::optional<std::string>& arg);
// `text` (JSON) as a message of o.type, or null without --type. Failure(usage) on bad input.
std::unique_ptr<google::protobuf::Message> encode_body(const BodyOptions& o, Types& types,
                                                       boost::asio::io_context& io, Client& client,
                                                       const std::string& text);

// A payload as JSON for --json output, and as text for people. `decoded` is false when the
// type is unknown or the bytes do not parse as it (then `note` says why).
struct Decoded {
    bool decoded = false;
    std::string json; // protobuf's JSON mapping, when decoded
    std::string note;
};
Decoded decode(const Types& types, std::string_view type_url, std::string_view payload);

// One received message as a line (text, or a JSON object with --json).
struct Shown {
    std::chrono::system_clock::time_point at;
    std::string kind; // for monitor; empty otherwise
    const v1::Envelope* envelope = nullptr;
    bool raw = false;
    bool headers = false;
};
std::string format_message(const Types& types, const Shown& s, const Global& g, const Style& style);

} // namespace bus::cli
