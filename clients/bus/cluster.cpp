// bus cluster ls|reload|restart|start|stop|scale|delete|logs: busd's applications and their
// workers, and control of them at run time, through busd's $sys.cluster.* requests
// (docs/cluster.md).
#include "commands.hpp"
#include "connect.hpp"
#include "loop.hpp"
#include "output.hpp"
#include "receive.hpp"

#include <bus/cluster_supervisor.hpp>
#include <bus/v1/cluster.pb.h>

#include <toml++/toml.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace bus::cli {
namespace {

std::string mib(std::uint64_t bytes) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
    return buf;
}

std::string uptime(std::int64_t started_ns) {
    if (started_ns <= 0)
        return "-";
    const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
    return duration_text(std::chrono::seconds(now - started_ns / 1'000'000'000), 2);
}

void print(const v1::ClusterList& list, const Global& g) {
    if (g.json) {
        for (const auto& app : list.apps())
            std::printf("%s\n", to_json(app).c_str());
        return;
    }
    const Style style{g.color()};
    Table apps({"APP", "STATE", "MODE", "INSTANCES", "RESTARTS", "PENDING", "LISTENING"});
    Table workers({"APP", "INSTANCE", "PID", "STATE", "CONNECTIONS", "UPTIME", "MEMORY", "CPU"});
    for (const auto& app : list.apps()) {
        std::string listening;
        for (const auto& l : app.listening())
            listening += (listening.empty() ? "" : " ") + l;
        std::string state = app.state();
        if (state == "errored")
            state = style.red(state + (app.reason().empty() ? "" : ": " + app.reason()));
        else if (state == "running")
            state = style.green(state);
        apps.add({app.name(), state, app.mode(), std::to_string(app.instances()),
                  std::to_string(app.restarts()), std::to_string(app.pending()),
                  listening.empty() ? "-" : listening});
        for (const auto& w : app.workers())
            workers.add({app.name(), std::to_string(w.instance()), std::to_string(w.pid()),
                         w.state(), std::to_string(w.connections()), uptime(w.started_unix_ns()),
                         mib(w.rss_bytes()), std::to_string(w.cpu_ms()) + " ms"});
    }
    apps.print(stdout, style);
    std::printf("\n");
    workers.print(stdout, style);
}

// busd's answer to `$sys.cluster.OP`, or Failure saying why there is none.
Message ask(boost::asio::io_context& io, Client& client, const std::string& op,
            const v1::ClusterCommand& command, double timeout_s) {
    const std::string& app = command.app();
    auto reply =
        call(io, client, "$sys.cluster." + op, command,
             std::chrono::milliseconds(static_cast<std::int64_t>(timeout_s * 1000)),
             [&](std::error_code ec, const Message& error) {
                 std::string text =
                     "busd refused cluster " + op + (app.empty() ? "" : " " + app) + ": ";
                 const std::string detail(error.header("detail"));
                 text += detail.empty() ? ec.message() : detail;
                 if (ec == errc::no_responders && detail.find("cluster") == std::string::npos)
                     text += " (is this busd running applications? docs/cluster.md)";
                 return text;
             });
    if (!reply)
        throw Failure(exit_code::failure, "interrupted");
    return std::move(*reply);
}

int run_cluster(const std::string& op, const v1::ClusterCommand& command, double timeout_s,
                const Global& g) {
    boost::asio::io_context io;
    const auto signals = watch_signals(io);
    auto client = connect(io, g, "cluster");
    const Message reply = ask(io, *client, op, command, timeout_s);
    client->close();
    v1::ClusterList list;
    if (!list.ParseFromString(std::string(reply.payload())))
        throw Failure(exit_code::failure,
                      "busd's answer to $sys.cluster." + op + " does not parse");
    print(list, g);
    return exit_code::ok;
}

void print(const v1::LogLine& line, const Global& g) {
    if (g.json) {
        std::printf("%s\n", to_json(line).c_str());
    } else {
        const Style style{g.color()};
        const auto at = std::chrono::system_clock::time_point(
            std::chrono::duration_cast<std::chrono::system_clock::duration>(
                std::chrono::nanoseconds(line.unix_ns())));
        const std::string who = line.app() + "[" + std::to_string(line.instance()) + "]";
        std::printf("%s %s %s %s\n", style.dim(local_time(at)).c_str(), style.cyan(who).c_str(),
                    line.stream() == "err" ? style.red("err|").c_str() : style.dim("out|").c_str(),
                    line.text().c_str());
    }
    std::fflush(stdout);
}

// `bus cluster logs APP`: the last lines of its log files, then (-f) what its workers write
// from now on, from `$sys.log.APP`. Subscribed before the tail is asked for, so nothing falls
// between the two; what both hold is shown once.
int run_logs(const std::string& app, std::uint32_t lines, bool follow,
             const std::optional<std::string>& timeout, const Global& g) {
    boost::asio::io_context io;
    const auto signals = watch_signals(io);
    auto client = connect(io, g, "cluster logs");
    std::vector<v1::LogLine> live;
    bool tail_shown = false, done = false;
    std::set<std::string> tail_keys; // lines of the tail, as they may arrive live too
    auto key = [](const v1::LogLine& l) {
        return std::to_string(l.unix_ns()) + " " + std::to_string(l.pid()) + " " + l.stream() +
               " " + l.text();
    };
    std::uint64_t shown = 0;
    std::optional<Failure> failed;
    if (follow)
        client->subscribe<v1::LogLine>("$sys.log." + app,
                                       [&](std::error_code ec, const v1::LogLine& line, Message&) {
                                           if (ec)
                                               return;
                                           if (!tail_shown)
                                               live.push_back(line);
                                           else if (!tail_keys.count(key(line)))
                                               print(line, g), ++shown;
                                       });
    v1::ClusterCommand command;
    command.set_app(app);
    command.set_lines(lines);
    const Message reply = ask(io, *client, "logs", command, 10);
    v1::LogTail tail;
    if (!tail.ParseFromString(std::string(reply.payload())))
        throw Failure(exit_code::failure, "busd's answer to $sys.cluster.logs does not parse");
    if (!g.json && !follow && tail.lines().empty())
        std::fprintf(stderr, "bus: %s holds nothing yet\n", tail.path().c_str());
    for (const auto& line : tail.lines()) {
        print(line, g);
        tail_keys.insert(key(line));
    }
    tail_shown = true;
    for (const auto& line : live)
        if (!tail_keys.count(key(line)))
            print(line, g), ++shown;
    if (!follow) {
        client->close();
        return exit_code::ok;
    }
    std::optional<std::chrono::milliseconds> limit;
    if (timeout)
        limit = parse_duration(*timeout, "--timeout");
    receive_until(io, *client, limit, done, failed, shown, 0, "--timeout");
    return exit_code::ok;
}

// `bus cluster start` with a definition: [[app]] tables as in busd's config, checked here with
// busd's own reader (a bad key is a usage error naming it) before busd gets them.
v1::ClusterCommand start_command(std::string text, const std::string& source,
                                 const std::string& base_dir) {
    try {
        cluster::parse_apps(text, source, base_dir);
    } catch (const ConfigError& e) {
        throw Failure(exit_code::usage, e.what());
    }
    v1::ClusterCommand command;
    command.set_config(std::move(text));
    command.set_cwd(base_dir);
    return command;
}

struct StartArgs {
    std::vector<std::string> args; // APP, FILE, or with --name: CMD ARGS...
    std::string name, mode, cwd;
    int instances = 1;
    std::vector<std::string> listen, env;
    double timeout_s = 120;
};

v1::ClusterCommand start_command(const StartArgs& a) {
    std::error_code ec;
    const auto here = std::filesystem::current_path(ec).string();
    if (a.name.empty()) {
        if (a.args.size() != 1)
            throw Failure(exit_code::usage,
                          "cluster start: give an APP, a FILE of [[app]] tables, or --name NAME "
                          "-- CMD ARGS...");
        const std::string& target = a.args[0];
        v1::ClusterCommand command;
        if (!std::filesystem::is_regular_file(target, ec)) {
            command.set_app(target); // a stopped or errored app of busd's
            return command;
        }
        std::ifstream in(target);
        std::ostringstream text;
        text << in.rdbuf();
        if (!in)
            throw Failure(exit_code::usage, "cannot read " + target);
        const auto dir = std::filesystem::absolute(target, ec).parent_path().string();
        return start_command(text.str(), target, dir);
    }
    // The PM2-like short form, written as the [[app]] table it stands for.
    if (a.args.empty())
        throw Failure(exit_code::usage, "cluster start --name: give the command after --");
    toml::table app{{"name", a.name}, {"command", a.args[0]}, {"instances", a.instances}};
    toml::array args, listen;
    for (std::size_t i = 1; i < a.args.size(); ++i)
        args.push_back(a.args[i]);
    for (const auto& l : a.listen)
        listen.push_back(l);
    app.insert("args", std::move(args));
    app.insert("listen", std::move(listen));
    if (!a.mode.empty())
        app.insert("mode", a.mode);
    if (!a.cwd.empty())
        app.insert("cwd", a.cwd);
    toml::table env;
    for (const auto& text : a.env) {
        const auto kv = key_value(text);
        if (!kv)
            throw Failure(exit_code::usage, "--env '" + text + "': give NAME=VALUE");
        env.insert(kv->first, kv->second);
    }
    if (!env.empty())
        app.insert("env", std::move(env));
    toml::table root{{"app", toml::array{std::move(app)}}};
    std::ostringstream text;
    text << root;
    return start_command(text.str(), "--name " + a.name, here);
}

} // namespace

void add_cluster(CLI::App& app, Global& g, Runner& run) {
    auto* cluster =
        app.add_subcommand("cluster", "busd's applications and workers: list and control them");
    cluster->require_subcommand(1);
    cluster->footer("\nExamples:\n"
                    "  bus cluster ls                  apps, then one row per worker\n"
                    "  bus cluster reload web          zero-downtime, one worker at a time\n"
                    "  bus cluster scale web 4\n"
                    "  bus cluster logs web -f         its workers' output, then what follows\n"
                    "  bus cluster start apps.toml     [[app]] tables, as in busd's config\n"
                    "  bus cluster start --name web --instances 2 \\\n"
                    "      --listen tcp://127.0.0.1:8080 -- ./server --port 0\n"
                    "  bus cluster ls --json | jq '.workers[].pid'");
    struct Args {
        std::string app;
        std::uint32_t instances = 0;
        double timeout_s = 120;
    };
    auto add = [&](const char* op, const char* help, bool app_required, bool with_count) {
        auto args = std::make_shared<Args>();
        auto* sub = cluster->add_subcommand(op, help);
        auto* name = sub->add_option("app", args->app, "the application's name");
        if (app_required)
            name->required();
        if (with_count)
            sub->add_option("instances", args->instances, "how many workers")
                ->required()
                ->check(CLI::Range(1, 1024));
        sub->add_option("--timeout", args->timeout_s,
                        "seconds to wait for busd to finish (default 120: a reload waits for "
                        "each new worker)");
        sub->callback([op, args, &g, &run] {
            run = [op, args, &g] {
                v1::ClusterCommand command;
                command.set_app(args->app);
                command.set_instances(args->instances);
                return run_cluster(op, command, args->timeout_s, g);
            };
        });
    };
    add("ls",
        "Apps (state, mode, restarts, addresses) and workers (pid, state, connections, "
        "uptime, memory, cpu)",
        false, false);
    add("reload", "Zero-downtime reload of an app (none named: every app)", false, false);
    add("restart", "Reload a running app; start a stopped or errored one", true, false);
    add("stop", "Stop an app gracefully (busd goes on)", true, false);
    add("scale", "Run N workers of an app", true, true);
    add("delete", "Stop an app gracefully, then forget it", true, false);

    struct LogsArgs {
        std::string app;
        std::uint32_t lines = 15;
        bool follow = false;
        std::optional<std::string> timeout;
    };
    auto logs = std::make_shared<LogsArgs>();
    auto* logs_cmd = cluster->add_subcommand(
        "logs", "The last lines its workers wrote (stdout and stderr), then with -f what they "
                "write next");
    logs_cmd->add_option("app", logs->app, "the application's name")->required();
    logs_cmd->add_option("-n,--lines", logs->lines, "how many of the last lines (default 15)")
        ->check(CLI::Range(1, 10000));
    logs_cmd->add_flag("-f,--follow", logs->follow, "then go on printing (Ctrl-C ends)");
    logs_cmd->add_option("--timeout", logs->timeout, "with -f: stop after this long (5s, 1m)");
    logs_cmd->callback([logs, &g, &run] {
        run = [logs, &g] {
            return run_logs(logs->app, logs->lines, logs->follow, logs->timeout, g);
        };
    });

    auto start = std::make_shared<StartArgs>();
    auto* sub = cluster->add_subcommand(
        "start", "Start a stopped or errored APP; add and start the apps of a FILE ([[app]] "
                 "tables as in busd's config); or add one app: --name NAME ... -- CMD ARGS...");
    sub->add_option("target", start->args, "APP, FILE, or with --name: CMD ARGS... (after --)");
    sub->add_option("--name", start->name, "a new app's name (the short form)");
    sub->add_option("-i,--instances", start->instances, "workers (short form; default 1)")
        ->check(CLI::Range(1, 1024));
    sub->add_option("--listen", start->listen, "tcp://HOST:PORT (short form; repeatable)");
    sub->add_option("--mode", start->mode,
                    "round_robin (default), least_connections, shared or reuseport")
        ->check(CLI::IsMember({"round_robin", "least_connections", "shared", "reuseport"}));
    sub->add_option("--cwd", start->cwd, "the workers' directory (short form; default: here)");
    sub->add_option("--env", start->env, "NAME=VALUE for the workers (short form; repeatable)");
    sub->add_option("--timeout", start->timeout_s, "seconds to wait for busd (default 120)");
    sub->callback([start, &g, &run] {
        run = [start, &g] {
            return run_cluster("start", start_command(*start), start->timeout_s, g);
        };
    });
}

} // namespace bus::cli
