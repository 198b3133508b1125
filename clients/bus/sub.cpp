// bus sub PATTERN...: print messages as they arrive, decoded through busd's type registry.
#include "body.hpp"
#include "commands.hpp"
#include "connect.hpp"
#include "loop.hpp"
#include "output.hpp"
#include "receive.hpp"
#include "types.hpp"

#include <algorithm>

namespace bus::cli {
namespace {

struct SubOptions {
    std::vector<std::string> patterns;
    bool raw = false;
    bool headers = false;
    std::uint64_t count = 0;
    std::string timeout;
    std::string queue;
};

bool clean_label(const std::string& s) {
    return s.size() <= 128 &&
           std::all_of(s.begin(), s.end(), [](char c) { return c > ' ' && c < 0x7f; });
}

int run_sub(const SubOptions& o, const Global& g) {
    for (const auto& p : o.patterns)
        check_pattern(p);
    if (!clean_label(o.queue))
        throw Failure(exit_code::usage, "--queue: '" + o.queue +
                                            "' is not a valid group name (printable ASCII, no "
                                            "spaces, at most 128 bytes)");
    std::optional<std::chrono::milliseconds> timeout;
    if (!o.timeout.empty())
        timeout = parse_duration(o.timeout, "--timeout");

    boost::asio::io_context io;
    const auto signals = watch_signals(io);
    auto client = connect(io, g, "sub");
    Types types;
    const Style style{g.color()};

    std::optional<Failure> failed;
    ArrivalQueue queue(types, *client, o.raw, o.count, [&](auto at, const v1::Envelope& e) {
        return format_message(types, Shown{at, {}, &e, o.raw, o.headers}, g, style);
    });
    report_events(*client, g, queue, failed, "the broker refused the subscription", "messages");
    for (const auto& p : o.patterns)
        client->subscribe(
            p, [&](Message& m) { queue.push(m.envelope()); }, o.queue);

    receive_until(io, *client, timeout, queue.done(), failed, queue.shown(), o.count, o.timeout);
    return exit_code::ok;
}

} // namespace

void add_sub(CLI::App& app, Global& g, Runner& run) {
    auto o = std::make_shared<SubOptions>();
    auto* cmd = app.add_subcommand("sub", "Print messages published on subjects matching PATTERN");
    cmd->add_option("pattern", o->patterns,
                    "subjects to follow: dot-separated tokens, `*` matches one token, `>` the "
                    "rest")
        ->required();
    cmd->add_flag("--raw", o->raw, "do not decode: the payload as hex (base64 with --json)");
    cmd->add_flag("--headers", o->headers, "show the messages' headers");
    cmd->add_option("-n,--count", o->count, "exit after N messages");
    cmd->add_option("-t,--timeout", o->timeout,
                    "exit after this long (500ms, 2s, 1m); with --count, too few messages by "
                    "then exits with 5");
    cmd->add_option("-q,--queue", o->queue,
                    "join a queue group: each message goes to one member of the group");
    cmd->footer("\nOne line per message: time, subject, source (the sender's client id), type,\n"
                "and the payload as JSON when busd's registry (or the binary) knows its type.\n"
                "With --json: {\"time\", \"subject\", \"source\", \"type\", \"payload\" | "
                "\"payload_base64\", \"headers\"}.\n\n"
                "Examples:\n"
                "  bus sub 'orders.>'\n"
                "  bus sub --json --count 10 'sensors.*' | jq .payload\n"
                "  bus sub --queue workers jobs.new\n"
                "  bus sub --raw --timeout 5s metrics.cpu");
    cmd->callback([o, &g, &run] { run = [o, &g] { return run_sub(*o, g); }; });
}

} // namespace bus::cli
