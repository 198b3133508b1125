// The [[app]] tables of busd's config. The rest of the file belongs to the broker
// (bus/src/broker/config.cpp), which leaves `app` to this reader.
#include "bus/cluster_supervisor.hpp"

#include "core/toml_reader.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace bus::cluster {
namespace {

bool valid_name(const std::string& name) {
    return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '-' || c == '_';
    });
}

// tcp://HOST:PORT with a numeric port; HOST may be [v6].
bool valid_listen(const std::string& address) {
    if (!address.starts_with("tcp://"))
        return false;
    const std::string rest = address.substr(6);
    const auto colon = rest.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == rest.size())
        return false;
    const std::string port = rest.substr(colon + 1);
    if (port.size() > 5 ||
        !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return false;
    return std::stoi(port) <= 65535;
}

constexpr std::int64_t hour_ms = 3600 * 1000;

} // namespace

std::vector<AppConfig> load_apps(const std::string& path) {
    std::ifstream in(path);
    if (!in)
        throw ConfigError(path + ": cannot read: " + std::strerror(errno));
    std::ostringstream text;
    text << in.rdbuf();
    return parse_apps(text.str(), path);
}

std::vector<AppConfig> parse_apps(std::string_view text, const std::string& path,
                                  const std::string& base_dir) {
    const toml::table root = bus::detail::parse_toml(text, path);
    // Relative to base_dir, when there is one (else relative to busd's own directory).
    const auto resolve = [&](const std::string& p) {
        if (base_dir.empty() || p.empty() || p.front() == '/')
            return p;
        return (std::filesystem::path(base_dir) / p).lexically_normal().string();
    };
    std::vector<AppConfig> apps;
    std::set<std::string> names;
    for (const auto& r : bus::detail::TomlReader(path, root).tables("app")) {
        r.only({"name",
                "command",
                "args",
                "cwd",
                "env",
                "instances",
                "listen",
                "mode",
                "max_restarts",
                "min_uptime_ms",
                "restart_delay_ms",
                "max_restart_delay_ms",
                "stop_exit_codes",
                "kill_timeout_ms",
                "listen_timeout_ms",
                "heartbeat_ms",
                "heartbeat_misses",
                "ack_timeout_ms",
                "max_pending",
                "max_memory_mb",
                "watch",
                "watch_debounce_ms",
                "log_dir",
                "log_max_mb",
                "log_files"});
        AppConfig app;
        app.name = r.string("name").value_or("");
        if (!valid_name(app.name))
            r.fail("name", "must be 1 to 64 letters, digits, '-' or '_'");
        if (!names.insert(app.name).second)
            r.fail("name", "'" + app.name + "' names another app too");
        const auto command = r.string("command");
        if (!command || command->empty())
            r.fail("command", "must be the program to run (a non-empty string)");
        app.argv.push_back(*command);
        for (auto& arg : r.strings("args"))
            app.argv.push_back(std::move(arg));
        app.cwd = r.string("cwd").value_or("");
        if (app.cwd.empty())
            app.cwd = base_dir;
        else
            app.cwd = resolve(app.cwd);
        if (const auto* env = r.get("env")) {
            if (!env->is_table())
                r.fail("env", "must be a table of strings (NAME = \"value\")");
            for (const auto& [key, value] : *env->as_table()) {
                const std::string name(key.str());
                if (!value.is_string() || name.empty() || name.find('=') != std::string::npos)
                    r.fail("env." + name, "must be a string");
                app.env.push_back(name + "=" + value.as_string()->get());
            }
        }
        r.integer("instances", app.instances, 1, 1024);
        app.listen = r.strings("listen");
        for (const auto& address : app.listen)
            if (!valid_listen(address))
                r.fail("listen", "'" + address + "' is not tcp://HOST:PORT");
        if (const auto mode = r.string("mode")) {
            if (*mode == "round_robin")
                app.mode = Mode::round_robin;
            else if (*mode == "least_connections")
                app.mode = Mode::least_connections;
            else if (*mode == "shared")
                app.mode = Mode::shared;
            else if (*mode == "reuseport")
                app.mode = Mode::reuseport;
            else
                r.fail("mode", "must be round_robin, least_connections, shared or reuseport");
        }
        if (app.mode == Mode::reuseport)
            for (const auto& address : app.listen)
                if (address.ends_with(":0"))
                    r.fail("listen", "'" + address +
                                         "': reuseport needs a fixed port (each worker binds it)");
        auto& p = app.restart;
        r.integer("max_restarts", p.max_restarts, 1, 1000000);
        r.duration("min_uptime_ms", p.min_uptime, 0, hour_ms);
        r.duration("restart_delay_ms", p.restart_delay, 0, hour_ms);
        r.duration("max_restart_delay_ms", p.max_restart_delay, 0, hour_ms);
        if (p.max_restart_delay < p.restart_delay)
            r.fail("max_restart_delay_ms", "must not be below restart_delay_ms");
        const std::string bad_codes = "must be an array of exit codes (0 to 255)";
        if (const auto* codes = r.array("stop_exit_codes", bad_codes))
            for (const auto& code : *codes) {
                if (!code.is_integer() || code.as_integer()->get() < 0 ||
                    code.as_integer()->get() > 255)
                    r.fail("stop_exit_codes", bad_codes);
                p.stop_exit_codes.push_back(static_cast<int>(code.as_integer()->get()));
            }
        r.duration("kill_timeout_ms", app.kill_timeout, 1, hour_ms);
        r.duration("listen_timeout_ms", app.listen_timeout, 1, hour_ms);
        r.duration("heartbeat_ms", app.heartbeat, 10, hour_ms);
        r.integer("heartbeat_misses", app.heartbeat_misses, 1, 1000);
        r.duration("ack_timeout_ms", app.ack_timeout, 1, hour_ms);
        r.integer("max_pending", app.max_pending, 1, 1000000);
        std::uint64_t max_memory_mb = 0;
        r.integer("max_memory_mb", max_memory_mb, 1, 1 << 20);
        app.max_memory = max_memory_mb << 20;
        app.watch = r.strings("watch");
        for (auto& watched : app.watch)
            watched = resolve(watched);
        for (const auto& watched : app.watch)
            if (watched.empty() || !std::filesystem::exists(watched))
                r.fail("watch", "'" + watched + "' does not exist");
        r.duration("watch_debounce_ms", app.watch_debounce, 10, 60000);
        app.log_dir = resolve(r.string("log_dir").value_or(""));
        std::uint64_t log_max_mb = app.log_max_bytes >> 20;
        r.integer("log_max_mb", log_max_mb, 1, 1 << 16);
        app.log_max_bytes = log_max_mb << 20;
        r.integer("log_files", app.log_files, 1, 100);
        apps.push_back(std::move(app));
    }
    return apps;
}

} // namespace bus::cluster
