// bus shm ls|rm: the shared-memory queues on this host (segments bus.* in /dev/shm), read from
// their headers without busd; and removing the stale ones a dead owner left.
#include "commands.hpp"
#include "connect.hpp"
#include "output.hpp"

#include <bus/shm_queue.hpp>

#include <nlohmann/json.hpp>

namespace bus::cli {
namespace {

std::string mode_name(shm::Mode mode) {
    return mode == shm::Mode::mpsc ? "mpsc" : "spsc";
}

// Nobody holds it and its creator is gone: what `bus shm rm --stale` removes.
bool stale(const shm::QueueInfo& q) {
    return !q.error && !q.in_use && !q.owner_alive;
}

int run_shm_ls(const Global& g) {
    auto queues = shm::list();
    if (!queues)
        throw Failure(exit_code::failure, "cannot list /dev/shm: " + queues.error().message());
    const Style style{g.color()};
    if (g.json) {
        for (const auto& q : queues.value()) {
            nlohmann::ordered_json j;
            j["name"] = q.name;
            if (q.error) {
                j["error"] = q.error.message();
            } else {
                j["mode"] = mode_name(q.mode);
                j["capacity"] = q.stats.capacity;
                j["depth_bytes"] = q.stats.depth_bytes;
                j["depth_records"] = q.stats.depth_records;
                j["produced"] = q.stats.produced;
                j["consumed"] = q.stats.consumed;
                j["skipped"] = q.stats.skipped;
                j["owner_pid"] = q.owner_pid;
                j["owner_alive"] = q.owner_alive;
                j["in_use"] = q.in_use;
                j["producers"] = q.producers;
                j["consumer"] = q.consumer;
                j["uid"] = q.uid;
                j["stale"] = stale(q);
            }
            std::printf("%s\n", j.dump().c_str());
        }
        return exit_code::ok;
    }
    Table t({"QUEUE", "MODE", "CAPACITY", "DEPTH", "RECORDS", "PRODUCED", "CONSUMED", "SKIPPED",
             "OWNER PID", "PRODUCERS", "CONSUMER", "STATE"});
    for (const auto& q : queues.value()) {
        if (q.error) {
            t.add({q.name, "-", "-", "-", "-", "-", "-", "-", "-", "-", "-",
                   style.red(q.error.message())});
            continue;
        }
        const std::string state = stale(q)   ? style.yellow("stale (bus shm rm --stale)")
                                  : q.in_use ? "in use"
                                             : "idle";
        t.add({q.name, mode_name(q.mode), std::to_string(q.stats.capacity),
               std::to_string(q.stats.depth_bytes), std::to_string(q.stats.depth_records),
               std::to_string(q.stats.produced), std::to_string(q.stats.consumed),
               std::to_string(q.stats.skipped),
               std::to_string(q.owner_pid) + (q.owner_alive ? "" : " (dead)"),
               std::to_string(q.producers), q.consumer ? "yes" : "no", state});
    }
    t.print(stdout, style);
    return exit_code::ok;
}

int run_shm_rm(const std::vector<std::string>& names, bool all_stale, bool force) {
    std::vector<std::string> targets = names;
    if (all_stale) {
        auto queues = shm::list();
        if (!queues)
            throw Failure(exit_code::failure, "cannot list /dev/shm: " + queues.error().message());
        for (const auto& q : queues.value())
            if (stale(q))
                targets.push_back(q.name);
    }
    int code = exit_code::ok;
    for (const auto& name : targets) {
        if (!shm::valid_name(name))
            throw Failure(exit_code::usage, shm::describe_error(name, {}));
        if (auto ec = shm::remove(name, force)) {
            std::fprintf(stderr, "bus: cannot remove %s%s\n", shm::describe_error(name, ec).c_str(),
                         ec == bus::errc::queue_in_use ? "; --force removes the name anyway" : "");
            code = exit_code::failure;
            continue;
        }
        std::printf("removed %s\n", name.c_str());
    }
    return code;
}

} // namespace

void add_shm(CLI::App& app, Global& g, Runner& run) {
    auto* shm_cmd = app.add_subcommand(
        "shm", "Shared-memory queues on this host (read from /dev/shm, busd not needed)");
    shm_cmd->require_subcommand(1);
    shm_cmd->footer("\nExamples:\n  bus shm ls\n  bus shm rm --stale");
    auto* ls = shm_cmd->add_subcommand("ls", "Every queue: mode, depth, counters, owner, state");
    ls->footer("\nA queue is stale when nobody has it open and its creator is gone.\n\n"
               "Examples:\n  bus shm ls\n  bus shm ls --json | jq 'select(.stale)'");
    ls->callback([&g, &run] { run = [&g] { return run_shm_ls(g); }; });

    auto names = std::make_shared<std::vector<std::string>>();
    auto all_stale = std::make_shared<bool>(false);
    auto force = std::make_shared<bool>(false);
    auto* rm = shm_cmd->add_subcommand("rm", "Remove queues by name, or every stale one");
    rm->add_option("names", *names, "queue names");
    rm->add_flag("--stale", *all_stale, "every queue nobody holds whose creator is gone");
    rm->add_flag("--force", *force,
                 "remove even a queue a live process holds (it keeps its mapping; the name goes)");
    rm->footer("\nExamples:\n  bus shm rm --stale\n  bus shm rm orders");
    rm->callback([names, all_stale, force, &run] {
        if (names->empty() && !*all_stale)
            throw CLI::ValidationError("bus shm rm", "name a queue, or give --stale");
        run = [names, all_stale, force] { return run_shm_rm(*names, *all_stale, *force); };
    });
}

} // namespace bus::cli
