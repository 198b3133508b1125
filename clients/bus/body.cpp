// Message bodies: options, encoding what is sent, decoding and showing what arrived
// (body.hpp).
#include "body.hpp"

#include <google/protobuf/util/json_util.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <iostream>
#include <sstream>

#include <unistd.h>

namespace bus::cli {

namespace pb = google::protobuf;

namespace {

// Decodes protobuf's JSON mapping into `m`; Failure(usage) naming the type on bad input.
void from_json(const std::string& text, pb::Message& m) {
    pb::util::JsonParseOptions options;
    if (auto status = pb::util::JsonStringToMessage(text, &m, options); !status.ok())
        throw Failure(exit_code::usage, "the body is not JSON for " +
                                            m.GetDescriptor()->full_name() + ": " +
                                            std::string(status.message()));
}

} // namespace

void add_body_options(CLI::App& cmd, BodyOptions& o) {
    cmd.add_option("--type", o.type,
                   "the body is JSON of this protobuf type (pkg.Msg), found in --proto / "
                   "--descriptor-set, in bus itself, or in busd's registry");
    cmd.add_option("--proto", o.proto, "a .proto file that defines --type")
        ->check(CLI::ExistingFile);
    cmd.add_option("-I,--proto-path", o.import_dirs,
                   "where --proto's imports are found (repeatable; default: its directory)")
        ->allow_extra_args(false);
    cmd.add_option("--descriptor-set", o.descriptor_set,
                   "a FileDescriptorSet defining --type (protoc --include_imports "
                   "--descriptor_set_out=FILE)")
        ->check(CLI::ExistingFile);
}

void load_body_types(const BodyOptions& o, Types& types) {
    if ((!o.proto.empty() || !o.descriptor_set.empty()) && o.type.empty())
        throw Failure(exit_code::usage, "--proto and --descriptor-set need --type to say which "
                                        "message the body is");
    if (!o.proto.empty())
        types.load_proto(o.proto, o.import_dirs);
    if (!o.descriptor_set.empty())
        types.load_descriptor_set(o.descriptor_set);
}

std::string read_body(const std::optional<std::string>& arg) {
    if (arg)
        return *arg;
    if (::isatty(STDIN_FILENO))
        return {};
    std::ostringstream s;
    s << std::cin.rdbuf();
    return s.str();
}

std::unique_ptr<pb::Message> encode_body(const BodyOptions& o, Types& types,
                                         boost::asio::io_context& io, Client& client,
                                         const std::string& text) {
    if (o.type.empty())
        return nullptr;
    const auto* d = types.resolve(io, client, o.type);
    auto m = types.make(d);
    // An empty body is the type's default value.
    if (!std::all_of(text.begin(), text.end(), [](char c) { return std::isspace(c); }))
        from_json(text, *m);
    return m;
}

Decoded decode(const Types& types, std::string_view type_url, std::string_view payload) {
    Decoded out;
    if (type_url.empty()) {
        out.note = "untyped";
        return out;
    }
    if (type_url == json_type_url) {
        if (nlohmann::json::accept(payload)) {
            out.decoded = true;
            out.json = nlohmann::json::parse(payload).dump();
        } else {
            out.note = "not JSON";
        }
        return out;
    }
    const std::string name = type_name_of(type_url);
    std::string error;
    const auto* d = types.find(name, &error);
    if (!d) {
        out.note = error;
        return out;
    }
    auto m = types.make(d);
    if (!m->ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
        out.note = "payload does not parse as " + name;
        return out;
    }
    out.json = to_json(*m);
    out.decoded = !out.json.empty();
    if (!out.decoded)
        out.note = "cannot print " + name + " as JSON";
    return out;
}

std::string format_message(const Types& types, const Shown& s, const Global& g,
                           const Style& style) {
    const auto& e = *s.envelope;
    const std::string type = type_name_of(e.type_url());
    Decoded d;
    if (!s.raw)
        d = decode(types, e.type_url(), e.payload());
    if (g.json) {
        nlohmann::ordered_json j;
        j["time"] = iso_time(s.at);
        if (!s.kind.empty())
            j["kind"] = s.kind;
        j["subject"] = e.subject();
        j["source"] = e.source();
        j["type"] = type;
        if (d.decoded) {
            j["payload"] = nlohmann::ordered_json::parse(d.json);
        } else {
            j["payload_base64"] = base64(e.payload());
            if (!s.raw && printable_utf8(e.payload()))
                j["payload_text"] = e.payload();
            if (!s.raw && !type.empty())
                j["error"] = d.note;
        }
        if (s.headers || !e.headers().empty()) {
            nlohmann::ordered_json h = nlohmann::ordered_json::object();
            for (const auto& kv : e.headers())
                h[kv.key()] = kv.value();
            j["headers"] = h;
        }
        return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    std::string line = style.dim(local_time(s.at)) + " ";
    if (!s.kind.empty())
        line += style.green(s.kind) + " ";
    line += style.bold(style.cyan(e.subject())) + " " + style.dim("from") + " " + e.source();
    if (!type.empty())
        line += " " + style.yellow(type);
    line += "  ";
    if (d.decoded)
        line += d.json;
    else if (s.raw || !printable_utf8(e.payload()))
        line += "hex:" + hex(e.payload());
    else
        line += nlohmann::json(e.payload()).dump();
    if (!s.raw && !d.decoded && !type.empty())
        line += "  " + style.red("(" + d.note + ")");
    if (s.headers)
        for (const auto& kv : e.headers())
            line += "\n    " + style.dim(kv.key() + ":") + " " + kv.value();
    return line;
}

} // namespace bus::cli
