// bus: the command-line inspector. Subscribes, publishes, calls and serves services, lists
// what the broker knows, and decodes protobuf payloads it was never compiled with (through
// busd's type registry). One source file per command group (commands.hpp); what they share
// is in connect, loop, output, types, receive and body.
#include "commands.hpp"
#include "connect.hpp"

#include <bus/endpoint.hpp>

#include <google/protobuf/stubs/logging.h>

#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
    using namespace bus::cli;
    // Errors are reported by the commands, with what to do; protobuf's own log lines (bad
    // UTF-8 in a payload, say) would only repeat them.
    google::protobuf::SetLogHandler(nullptr);

    CLI::App app{"bus: inspect and use the bus. Subscribe, publish, call services and look at "
                 "what busd knows;\npayloads are decoded through busd's type registry, so "
                 "`bus` shows types it was never built with."};
    app.footer(std::string("\nExamples:\n"
                           "  bus sub 'orders.>'                   print what is published\n"
                           "  bus sub --json --count 1 sensors.*   one JSON line, for jq\n"
                           "  bus pub greet hello                  an untyped payload\n"
                           "  bus pub --type pkg.Msg orders.new '{\"id\": 1}'\n"
                           "  bus req --type pkg.Query svc '{}'    call a service\n"
                           "  bus monitor                          everything busd routes\n"
                           "  bus top                              live rates and drops\n"
                           "  bus ls clients                       who is connected\n"
                           "  bus types show pkg.Msg               a type's schema\n"
                           "  bus shm ls                           shared-memory queues here\n"
                           "  bus cluster ls                       busd's apps and workers\n\n") +
               exit_codes_help);
    app.require_subcommand(1);
    app.fallthrough();

    Global g;
    std::string endpoint;
    app.add_option("-e,--endpoint", endpoint,
                   "broker endpoint: ipc://PATH, unix://PATH or tcp://HOST:PORT (default: "
                   "BUS_ENDPOINT, else the user's busd)");
    app.add_flag("--json", g.json, "one JSON object per line (for jq)");
    app.add_flag("--no-color", g.no_color, "no colours even on a terminal (also: NO_COLOR)");
    app.add_option("--connect-timeout", g.connect_timeout_s,
                   "seconds to wait for the broker to answer (default 2)");

    Runner run;
    add_sub(app, g, run);
    add_pub(app, g, run);
    add_req(app, g, run);
    add_ls(app, g, run);
    add_monitor(app, g, run);
    add_top(app, g, run);
    add_bench(app, g, run);
    add_shm(app, g, run);
    add_cluster(app, g, run);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        // An unknown command reads better named than as "a subcommand is required".
        if (app.get_subcommands().empty() && !app.remaining().empty() &&
            app.remaining().front().rfind("-", 0) != 0) {
            std::string names;
            for (const auto* cmd : app.get_subcommands([](CLI::App*) { return true; }))
                names += (names.empty() ? "" : ", ") + cmd->get_name();
            std::fprintf(stderr, "bus: unknown command '%s' (commands: %s; see bus --help)\n",
                         app.remaining().front().c_str(), names.c_str());
            return exit_code::usage;
        }
        // No command at all: the help, which lists them.
        if (app.get_subcommands().empty() && app.remaining().empty() &&
            dynamic_cast<const CLI::RequiredError*>(&e)) {
            std::fputs(app.help().c_str(), stderr);
            return exit_code::usage;
        }
        const int code = app.exit(e);
        return code == 0 ? 0 : exit_code::usage;
    } catch (const Failure& f) {
        std::fprintf(stderr, "bus: %s\n", f.what());
        return f.code;
    }
    try {
        if (!endpoint.empty()) {
            g.endpoint = endpoint;
        } else {
            auto def = bus::default_endpoint();
            if (!def)
                throw Failure(exit_code::unavailable, "no default endpoint (" +
                                                          def.error().message() +
                                                          "): give one with -e or BUS_ENDPOINT");
            g.endpoint = def.value();
        }
        if (!run)
            return exit_code::usage;
        return run();
    } catch (const Failure& f) {
        std::fflush(stdout);
        std::fprintf(stderr, "bus: %s\n", f.what());
        return f.code;
    }
}
