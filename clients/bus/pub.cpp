// bus pub SUBJECT [BODY]: publish raw bytes, or JSON encoded as a protobuf type.
#include "body.hpp"
#include "commands.hpp"
#include "connect.hpp"
#include "loop.hpp"
#include "types.hpp"

#include <bus/subject.hpp>

#include <boost/asio/steady_timer.hpp>

#include <unistd.h>

namespace bus::cli {
namespace {

struct PubOptions {
    std::string subject;
    std::optional<std::string> body;
    BodyOptions body_options;
    std::uint64_t count = 1;
    double rate = 0;
    std::vector<std::string> headers;
};

int run_pub(const PubOptions& o, const Global& g) {
    if (!valid_subject(o.subject))
        throw Failure(exit_code::usage, "'" + o.subject +
                                            "' is not a valid subject: dot-separated tokens of "
                                            "printable ASCII, no wildcards");
    if (o.subject == "$sys" || o.subject.starts_with("$sys."))
        throw Failure(exit_code::usage, "$sys subjects belong to the broker: clients cannot "
                                        "publish on them");
    if (o.rate < 0 || !std::isfinite(o.rate))
        throw Failure(exit_code::usage, "--rate must be a positive number of messages a second");
    Client::Headers headers;
    for (const auto& h : o.headers) {
        auto header = key_value(h);
        if (!header)
            throw Failure(exit_code::usage, "--header: '" + h + "' is not KEY=VALUE");
        headers.push_back(std::move(*header));
    }
    Types types;
    load_body_types(o.body_options, types);
    const std::string body = read_body(o.body);

    boost::asio::io_context io;
    const auto signals = watch_signals(io);
    auto client = connect(io, g, "pub");
    std::optional<Failure> failed;
    client->on_event([&](const ClientEvent& e) {
        if (e.kind == ClientEvent::Kind::error && !failed)
            failed = refusal("the broker refused the message", e);
    });
    const auto message = encode_body(o.body_options, types, io, *client, body);

    auto publish_one = [&] {
        return message ? client->publish(o.subject, *message, headers)
                       : client->publish_bytes(o.subject, body, headers);
    };
    const auto start = std::chrono::steady_clock::now();
    boost::asio::steady_timer timer(io);
    std::uint64_t sent = 0;
    while (sent < o.count && !interrupted() && !failed) {
        if (o.rate > 0) {
            // Paced from the start, so a slow turn does not lower the rate.
            const auto due =
                start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(sent / o.rate));
            bool fired = false;
            timer.expires_at(due);
            timer.async_wait([&](const boost::system::error_code&) { fired = true; });
            run_until_done(io, [&] { return fired; });
            if (interrupted())
                break;
        }
        const bool below_hwm = publish_one();
        ++sent;
        // Past the link's high-water mark, or every so often: wait until busd has it all, so
        // a long run neither grows this process nor outruns the broker.
        if (!below_hwm || sent % 1000 == 0) {
            if (auto ec = client->flush_wait(std::chrono::seconds(10)); ec && !interrupted())
                throw Failure(exit_code::unavailable, "the broker at " + g.endpoint +
                                                          " stopped answering: " + ec.message());
        }
    }
    if (!interrupted())
        if (auto ec = client->flush_wait(std::chrono::seconds(10)); ec && !interrupted())
            throw Failure(exit_code::unavailable,
                          "the broker at " + g.endpoint + " did not confirm: " + ec.message());
    client->close();
    if (failed)
        throw *failed;
    if (::isatty(STDERR_FILENO))
        std::fprintf(stderr, "published %llu message%s to %s\n",
                     static_cast<unsigned long long>(sent), sent == 1 ? "" : "s",
                     o.subject.c_str());
    return exit_code::ok;
}

} // namespace

void add_pub(CLI::App& app, Global& g, Runner& run) {
    auto o = std::make_shared<PubOptions>();
    auto* cmd = app.add_subcommand("pub", "Publish a message on SUBJECT");
    cmd->add_option("subject", o->subject, "where to publish (no wildcards)")->required();
    cmd->add_option("body", o->body,
                    "the payload: raw bytes, or JSON with --type (default: stdin when it is not "
                    "a terminal, else empty)");
    add_body_options(*cmd, o->body_options);
    cmd->add_option("-n,--count", o->count, "publish it N times (default 1)");
    cmd->add_option("-r,--rate", o->rate,
                    "at most R messages a second (default: as fast as busd "
                    "takes them)");
    cmd->add_option("-H,--header", o->headers, "a header KEY=VALUE (repeatable)")
        ->allow_extra_args(false); // one value each time: the next word is the subject
    cmd->footer(
        "\nExamples:\n"
        "  bus pub greet hello\n"
        "  bus pub --type bus.v1.Heartbeat beats '{\"seq\": \"7\"}'\n"
        "  echo '{\"id\": 1}' | bus pub --type shop.v1.Order --proto order.proto orders.new\n"
        "  bus pub --count 1000 --rate 100 --header trace=abc load.test x");
    cmd->callback([o, &g, &run] { run = [o, &g] { return run_pub(*o, g); }; });
}

} // namespace bus::cli
