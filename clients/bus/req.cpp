// bus req SERVICE [BODY]: call a service and print its reply; bus serve SERVICE: answer one.
#include "body.hpp"
#include "commands.hpp"
#include "connect.hpp"
#include "loop.hpp"
#include "output.hpp"
#include "types.hpp"

#include <bus/subject.hpp>

namespace bus::cli {
namespace {

struct ReqOptions {
    std::string service;
    std::optional<std::string> body;
    BodyOptions body_options;
    std::string timeout = "5s";
};

void check_service(const std::string& service, bool allow_sys) {
    if (!valid_subject(service))
        throw Failure(exit_code::usage, "'" + service +
                                            "' is not a valid service name: dot-separated "
                                            "tokens of printable ASCII, no wildcards");
    if (!allow_sys && (service == "$sys" || service.starts_with("$sys.")))
        throw Failure(exit_code::usage, "$sys services belong to the broker");
}

// The payload for people: decoded JSON, else the bytes as text, else hex.
std::string payload_text(const Types& types, const v1::Envelope& e) {
    const auto d = decode(types, e.type_url(), e.payload());
    if (d.decoded)
        return d.json;
    if (printable_utf8(e.payload()))
        return e.payload();
    return "hex:" + hex(e.payload());
}

int run_req(const ReqOptions& o, const Global& g) {
    check_service(o.service, true);
    const auto timeout = parse_duration(o.timeout, "--timeout");
    Types types;
    load_body_types(o.body_options, types);
    const std::string body = read_body(o.body);

    boost::asio::io_context io;
    const auto signals = watch_signals(io);
    auto client = connect(io, g, "req");
    const auto request = encode_body(o.body_options, types, io, *client, body);

    const Explain what_failed = [&](std::error_code ec, const Message& error) {
        std::string text = explain(ec, o.service, g);
        if (const std::string detail(error.header("detail"));
            !detail.empty() && detail != o.service)
            text += ": " + detail;
        if (ec == errc::request_failed)
            text += " (" + error.envelope().subject() + ")";
        return text;
    };
    const auto reply = request ? call(io, *client, o.service, *request, timeout, what_failed)
                               : call(io, *client, o.service, body, timeout, what_failed);
    if (!reply)
        throw Failure(exit_code::failure, "interrupted");
    const auto& type_url = reply->envelope().type_url();
    if (!type_url.empty() && type_url != json_type_url)
        types.fetch_wait(io, *client, type_name_of(type_url));
    const Style style{g.color()};
    std::string line;
    if (g.json) {
        Shown s{std::chrono::system_clock::now(), {}, &reply->envelope(), false, false};
        line = format_message(types, s, g, style);
    } else {
        line = payload_text(types, reply->envelope());
    }
    std::fwrite(line.data(), 1, line.size(), stdout);
    std::fputc('\n', stdout);
    client->close();
    return exit_code::ok;
}

struct ServeOptions {
    std::string service;
    std::optional<std::string> reply;
    BodyOptions body_options;
    std::string fail;
    std::uint64_t count = 0;
    bool quiet = false;
};

int run_serve(const ServeOptions& o, const Global& g) {
    check_service(o.service, false);
    if (o.reply && !o.fail.empty())
        throw Failure(exit_code::usage, "--reply and --fail: choose one");
    Types types;
    load_body_types(o.body_options, types);

    boost::asio::io_context io;
    const auto signals = watch_signals(io);
    auto client = connect(io, g, "serve");
    // Fixed reply: typed (--type) or raw; without one, each request is echoed back.
    std::unique_ptr<google::protobuf::Message> fixed;
    if (o.reply)
        fixed = encode_body(o.body_options, types, io, *client, *o.reply);
    else if (!o.body_options.type.empty())
        throw Failure(exit_code::usage, "--type describes --reply: give one");

    const Style style{g.color()};
    std::uint64_t answered = 0;
    bool done = false;
    std::optional<Failure> failed;
    client->on_event([&](const ClientEvent& e) {
        if (e.kind == ClientEvent::Kind::error) {
            failed.emplace(exit_code_for(e.error), "the broker refused to let us serve " +
                                                       o.service + ": " + e.error.message());
            done = true;
        }
    });
    auto answer = [&](Message& m, Responder responder) {
        if (!o.quiet) {
            Shown s{std::chrono::system_clock::now(), {}, &m.envelope(), false, false};
            const auto line = format_message(types, s, g, style);
            std::fwrite(line.data(), 1, line.size(), stdout);
            std::fputc('\n', stdout);
            std::fflush(stdout);
        }
        if (!o.fail.empty()) {
            responder.fail(o.fail, "bus serve --fail");
        } else if (fixed) {
            responder.reply(*fixed);
        } else if (const auto& url = m.envelope().type_url();
                   !url.empty() && url != json_type_url) {
            // An echo keeps the request's type, when it can be known.
            const auto* d = types.find(type_name_of(url));
            auto copy = d ? types.make(d) : nullptr;
            if (copy && copy->ParseFromString(std::string(m.payload())))
                responder.reply(*copy);
            else
                responder.reply_bytes(m.payload());
        } else {
            responder.reply_bytes(m.payload());
        }
        if (o.count && ++answered >= o.count)
            done = true;
    };
    client->serve(o.service, [&](Message& m, Responder& responder) {
        if (done)
            return;
        const auto& url = m.envelope().type_url();
        if (o.quiet || url.empty() || url == json_type_url || types.find_local(type_name_of(url)) ||
            types.fetched(type_name_of(url)))
            return answer(m, responder);
        // The request's type is not known yet: ask busd, then answer.
        auto held = std::make_shared<Message>(std::move(m));
        types.fetch(*client, type_name_of(url),
                    [&answer, held, responder] { answer(*held, responder); });
    });
    if (auto ec = client->flush_wait(); ec)
        throw Failure(exit_code::unavailable,
                      "the broker at " + g.endpoint + " did not confirm: " + ec.message());
    if (failed)
        throw *failed;
    run_until_done(io, [&] { return done; });
    // Let the last replies leave before closing.
    if (!interrupted())
        client->flush_wait();
    client->close();
    if (failed)
        throw *failed;
    return exit_code::ok;
}

} // namespace

void add_req(CLI::App& app, Global& g, Runner& run) {
    auto o = std::make_shared<ReqOptions>();
    auto* cmd = app.add_subcommand("req", "Call SERVICE and print its reply");
    cmd->add_option("service", o->service, "the service (or a $sys request such as $sys.stats)")
        ->required();
    cmd->add_option("body", o->body,
                    "the request: raw bytes, or JSON with --type (default: stdin when it is not "
                    "a terminal, else empty)");
    add_body_options(*cmd, o->body_options);
    cmd->add_option("-t,--timeout", o->timeout, "how long to wait for the reply (default 5s)");
    cmd->footer(std::string("\nPrints the reply's payload (decoded to JSON when its type is "
                            "known); with --json, the\nwhole reply as one JSON object.\n\n"
                            "Examples:\n"
                            "  bus req time.now\n"
                            "  bus req --type shop.v1.Query shop.find '{\"id\": 7}'\n"
                            "  bus req '$sys.stats'\n\n") +
                exit_codes_help);
    cmd->callback([o, &g, &run] { run = [o, &g] { return run_req(*o, g); }; });

    auto s = std::make_shared<ServeOptions>();
    auto* serve = app.add_subcommand("serve", "Answer requests for SERVICE (for testing)");
    serve->add_option("service", s->service, "the service to serve")->required();
    serve->add_option("--reply", s->reply,
                      "answer every request with this body (JSON with --type); default: echo "
                      "the request");
    add_body_options(*serve, s->body_options);
    serve->add_option("--fail", s->fail, "answer every request with this error name instead");
    serve->add_option("-n,--count", s->count, "exit after answering N requests");
    serve->add_flag("--quiet", s->quiet, "do not print the requests");
    serve->footer("\nPrints each request as `bus sub` prints a message.\n\n"
                  "Examples:\n"
                  "  bus serve echo\n"
                  "  bus serve --reply pong ping\n"
                  "  bus serve --type bus.v1.Heartbeat --reply '{\"seq\": \"1\"}' beat.latest");
    serve->callback([s, &g, &run] { run = [s, &g] { return run_serve(*s, g); }; });
}

} // namespace bus::cli
