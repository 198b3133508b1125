// What the broker knows: bus ls clients|subjects|subscriptions|services|types, bus status,
// bus types show pkg.Msg.
#include "commands.hpp"
#include "connect.hpp"
#include "loop.hpp"
#include "output.hpp"
#include "types.hpp"

#include <bus/v1/broker.pb.h>

#include <google/protobuf/descriptor.pb.h>
#include <nlohmann/json.hpp>

namespace bus::cli {
namespace {

// Asks busd one of its $sys questions; Failure when it does not answer.
template <class T>
T ask(boost::asio::io_context& io, Client& client, const Global& g, const std::string& what) {
    const auto reply = call(
        io, client, what, "", std::chrono::seconds(5), [&](std::error_code ec, const Message&) {
            return "busd did not answer " + what + " at " + g.endpoint + ": " + ec.message();
        });
    if (!reply)
        throw Failure(exit_code::failure, "interrupted");
    T out;
    if (!out.ParseFromString(std::string(reply->payload())))
        throw Failure(exit_code::failure, "busd's answer to " + what + " does not parse");
    return out;
}

void print_line(const std::string& line) {
    std::fwrite(line.data(), 1, line.size(), stdout);
    std::fputc('\n', stdout);
}

std::string num(std::uint64_t n) {
    return std::to_string(n);
}

// Time since busd's start or a client's connection, to the second.
std::string elapsed_text(std::int64_t ns) {
    return duration_text(std::chrono::seconds(ns / 1'000'000'000), 3);
}

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

int run_ls(const std::string& what, const Global& g) {
    boost::asio::io_context io;
    const auto signals = watch_signals(io);
    auto client = connect(io, g, "ls");
    const Style style{g.color()};
    if (what == "clients") {
        const auto list = ask<v1::ClientList>(io, *client, g, "$sys.clients");
        if (g.json) {
            for (const auto& c : list.clients())
                print_line(to_json(c));
            return exit_code::ok;
        }
        Table t({"ID", "NAME", "PID", "UID", "LINK", "MSGS IN", "MSGS OUT", "DROPPED", "QUEUED",
                 "SUBS", "UP"});
        for (const auto& c : list.clients())
            t.add({c.id(), c.name(), num(c.pid()), num(c.uid()), c.transport(), num(c.msgs_in()),
                   num(c.msgs_out()), num(c.dropped()), num(c.queued()), num(c.subscriptions()),
                   c.connected_unix_ns() ? elapsed_text(now_ns() - c.connected_unix_ns()) : "-"});
        t.print(stdout, style);
    } else if (what == "subjects") {
        const auto stats = ask<v1::BrokerStats>(io, *client, g, "$sys.stats");
        if (g.json) {
            for (const auto& s : stats.subjects())
                print_line(to_json(s));
            return exit_code::ok;
        }
        Table t({"SUBJECT", "MSGS", "BYTES", "DROPPED"});
        for (const auto& s : stats.subjects())
            t.add({s.subject(), num(s.msgs()), num(s.bytes()), num(s.dropped())});
        t.print(stdout, style);
    } else if (what == "subscriptions") {
        const auto list = ask<v1::SubscriptionList>(io, *client, g, "$sys.subscriptions");
        if (g.json) {
            for (const auto& s : list.subscriptions())
                print_line(to_json(s));
            return exit_code::ok;
        }
        Table t({"PATTERN", "CLIENT", "SID", "QUEUE GROUP"});
        for (const auto& s : list.subscriptions())
            t.add({s.pattern(), s.client_id(), num(s.sid()),
                   s.monitor() ? "(monitor)" : s.queue_group()});
        t.print(stdout, style);
    } else if (what == "services") {
        const auto list = ask<v1::ServiceList>(io, *client, g, "$sys.services");
        if (g.json) {
            for (const auto& s : list.services())
                print_line(to_json(s));
            return exit_code::ok;
        }
        Table t({"SERVICE", "INSTANCES", "REQUESTS"});
        for (const auto& s : list.services()) {
            std::string instances;
            for (const auto& i : s.instances())
                instances += (instances.empty() ? "" : ",") + i;
            t.add({s.name(), instances.empty() ? "-" : instances, num(s.requests())});
        }
        t.print(stdout, style);
    } else if (what == "queues") {
        const auto list = ask<v1::QueueList>(io, *client, g, "$sys.queues");
        if (g.json) {
            for (const auto& q : list.queues())
                print_line(to_json(q));
            return exit_code::ok;
        }
        Table t({"QUEUE", "CLIENT", "MODE", "CAPACITY", "DEPTH", "RECORDS", "PRODUCED", "CONSUMED",
                 "SKIPPED", "OWNER PID", "PRODUCERS", "CONSUMER"});
        for (const auto& q : list.queues()) {
            if (!q.error().empty()) {
                t.add({q.name(), q.client_id(), style.red(q.error())});
                continue;
            }
            t.add({q.name(), q.client_id(), q.mode(), num(q.capacity()), num(q.depth_bytes()),
                   num(q.depth_records()), num(q.produced()), num(q.consumed()), num(q.skipped()),
                   num(q.owner_pid()) + (q.owner_alive() ? "" : style.yellow(" (dead)")),
                   num(q.producers()), q.consumer() ? "yes" : "no"});
        }
        t.print(stdout, style);
    } else {
        const auto list = ask<v1::TypeList>(io, *client, g, "$sys.types");
        if (g.json) {
            for (const auto& ty : list.types())
                print_line(to_json(ty));
            return exit_code::ok;
        }
        Table t({"TYPE", "REGISTERED BY", "DESCRIPTOR BYTES"});
        for (const auto& ty : list.types())
            t.add({ty.name(), ty.registered_by(), num(ty.descriptor_bytes())});
        t.print(stdout, style);
    }
    client->close();
    return exit_code::ok;
}

int run_status(const Global& g) {
    boost::asio::io_context io;
    const auto signals = watch_signals(io);
    auto client = connect(io, g, "status");
    const auto stats = ask<v1::BrokerStats>(io, *client, g, "$sys.stats");
    client->close();
    const auto uptime_ns = now_ns() - stats.started_unix_ns();
    if (g.json) {
        auto j = nlohmann::ordered_json::parse(to_json(stats));
        j.erase("subjects");
        j["endpoint"] = g.endpoint;
        j["uptime_s"] = uptime_ns / 1'000'000'000;
        print_line(j.dump());
        return exit_code::ok;
    }
    const Style style{g.color()};
    std::string endpoints;
    for (const auto& e : stats.endpoints())
        endpoints += (endpoints.empty() ? "" : " ") + e;
    print_line(style.green("●") + " " + style.bold("busd " + stats.version()) + " at " +
               g.endpoint);
    print_line("  broker id:   " + stats.broker_id());
    print_line("  uptime:      " + elapsed_text(uptime_ns));
    print_line("  endpoints:   " + endpoints);
    if (!stats.http().empty())
        print_line("  http:        " + stats.http());
    print_line("  clients:     " + num(stats.clients()));
    print_line("  msgs routed: " + num(stats.msgs_routed()));
    print_line("  dropped:     " + num(stats.dropped()));
    for (const auto& b : stats.bridges()) {
        print_line("  bridge " + b.name() + " (" + b.kind() + "): " + b.state() +
                   (b.server().empty() ? "" : " to " + b.server()));
        print_line("    in " + num(b.msgs_in()) + ", out " + num(b.msgs_out()) + ", buffered " +
                   num(b.buffered()) + " bytes, dropped " + num(b.dropped()) + ", requests in " +
                   num(b.requests_in()) + ", out " + num(b.requests_out()));
        if (!b.error().empty())
            print_line("    error: " + b.error());
    }
    return exit_code::ok;
}

int run_types_show(const std::string& name, bool whole_file, const Global& g) {
    boost::asio::io_context io;
    const auto signals = watch_signals(io);
    auto client = connect(io, g, "types");
    Types types;
    const auto* d = types.resolve(io, *client, name);
    client->close();
    if (g.json) {
        google::protobuf::DescriptorProto proto;
        d->CopyTo(&proto);
        print_line(to_json(proto));
        return exit_code::ok;
    }
    if (whole_file) {
        std::fputs(d->file()->DebugString().c_str(), stdout);
        return exit_code::ok;
    }
    std::printf("// %s, from %s\n", d->full_name().c_str(), d->file()->name().c_str());
    std::fputs(d->DebugString().c_str(), stdout);
    return exit_code::ok;
}

} // namespace

void add_ls(CLI::App& app, Global& g, Runner& run) {
    auto what = std::make_shared<std::string>();
    auto* ls = app.add_subcommand("ls", "List what the broker knows, as a table (or --json)");
    ls->add_option("what", *what, "clients, subjects, subscriptions, services, types or queues")
        ->required()
        ->check(
            CLI::IsMember({"clients", "subjects", "subscriptions", "services", "types", "queues"}));
    ls->footer("\n  clients        connected clients: id, name, pid, uid, link, traffic, drops, "
               "queue\n"
               "  subjects       subjects busd delivered so far: messages, bytes, drops\n"
               "  subscriptions  patterns subscribed to, by client\n"
               "  services       services and their instances\n"
               "  types          protobuf types in busd's registry\n"
               "  queues         shared-memory queues clients announced: depth, counters\n"
               "                 (every queue on this host, announced or not: bus shm ls)\n\n"
               "Examples:\n"
               "  bus ls clients\n"
               "  bus ls --json services | jq .name");
    ls->callback([what, &g, &run] { run = [what, &g] { return run_ls(*what, g); }; });

    auto* status = app.add_subcommand(
        "status", "The broker's version, uptime, endpoints and totals (exit 3 when none answers)");
    status->footer(
        "\nExit code 0 when busd answered, 3 when no broker did (with the endpoint "
        "tried).\n\nExamples:\n  bus status\n  bus -e unix:///run/user/1000/bus/busd.sock "
        "status --json | jq .uptime_s");
    status->callback([&g, &run] { run = [&g] { return run_status(g); }; });

    auto* types = app.add_subcommand("types", "Types in busd's registry");
    types->require_subcommand(1);
    types->footer("\nExamples:\n  bus types ls\n  bus types show shop.v1.Order");
    auto* types_ls = types->add_subcommand("ls", "The same as `bus ls types`");
    types_ls->callback([&g, &run] { run = [&g] { return run_ls("types", g); }; });
    auto name = std::make_shared<std::string>();
    auto whole_file = std::make_shared<bool>(false);
    auto* show = types->add_subcommand("show", "A type's schema as .proto text");
    show->add_option("type", *name, "the full name, pkg.Msg")->required();
    show->add_flag("--file", *whole_file, "the whole .proto file that defines it");
    show->footer("\nExamples:\n  bus types show bus.v1.Heartbeat\n  bus types show --file "
                 "shop.v1.Order");
    show->callback([name, whole_file, &g, &run] {
        run = [name, whole_file, &g] { return run_types_show(*name, *whole_file, g); };
    });
}

} // namespace bus::cli
