// The `$sys.cluster.*` requests busd serves (Supervisor::control, Supervisor::logs): `ls`, the
// commands that change apps (reload, restart, start, stop, scale, delete) and the tail of an
// app's logs, with who may ask what, and describe(), what `ls` and `$sys.cluster.errored` say.
#include "cluster/supervisor.hpp"

#include "cluster/proc_stats.hpp"

#include <algorithm>
#include <chrono>

namespace bus::cluster {

void describe(const App& a, v1::ClusterApp& info) {
    info.set_name(a.config.name);
    info.set_state(a.state == AppState::running    ? "running"
                   : a.state == AppState::stopping ? "stopping"
                   : a.state == AppState::stopped  ? "stopped"
                                                   : "errored");
    info.set_instances(static_cast<std::uint32_t>(a.config.instances));
    info.set_mode(a.config.mode == Mode::round_robin         ? "round_robin"
                  : a.config.mode == Mode::least_connections ? "least_connections"
                  : a.config.mode == Mode::shared            ? "shared"
                                                             : "reuseport");
    int restarts = 0;
    for (const auto& s : a.slots)
        restarts += s->tracker.restarts();
    info.set_restarts(static_cast<std::uint32_t>(restarts));
    for (const auto& l : a.listeners)
        info.add_listening(l->address);
    if (a.config.mode == Mode::reuseport && a.state == AppState::running)
        for (const auto& address : a.config.listen)
            info.add_listening(address);
    info.set_pending(static_cast<std::uint32_t>(a.pending.size()));
    info.set_reason(a.reason);
    for (const auto& p : a.procs)
        describe(*p, *info.add_workers());
}

void describe(const Proc& p, v1::ClusterWorker& w) {
    const auto now_steady = Clock::now();
    const auto now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
    w.set_instance(static_cast<std::uint32_t>(p.instance));
    w.set_joined(p.joined);
    w.set_pid(static_cast<std::uint32_t>(p.pid()));
    w.set_state(p.state_name());
    w.set_connections(p.reported_load + p.sent_since_report);
    w.set_started_unix_ns(
        now_ns -
        std::chrono::duration_cast<std::chrono::nanoseconds>(now_steady - p.started).count());
    w.set_rss_bytes(detail::rss_bytes(p.pid()));
    w.set_cpu_ms(detail::cpu_ms(p.pid()));
    // A worker answers each ping within its round trip: what is beyond the ping interval since
    // its last answer is how far behind it is.
    const auto silent =
        std::chrono::duration_cast<std::chrono::milliseconds>(now_steady - p.last_answer);
    w.set_heartbeat_lag_ms(static_cast<std::uint32_t>(
        std::max<std::int64_t>(0, (silent - p.app->config.heartbeat).count())));
}

v1::ClusterList Supervisor::list() const {
    v1::ClusterList out;
    for (const auto& a : impl_->apps)
        describe(*a, *out.add_apps());
    return out;
}

std::error_code Supervisor::logs(const v1::ClusterCommand& command, bool privileged,
                                 v1::LogTail& out, std::string& detail) {
    if (!privileged) {
        detail = "only busd's own user reads its apps' logs";
        return errc::forbidden;
    }
    App* app = impl_->find_app(command.app());
    if (!app) {
        detail = command.app().empty() ? "which app?" : "no app named '" + command.app() + "'";
        return errc::request_failed;
    }
    const std::size_t n = std::min<std::uint32_t>(command.lines() ? command.lines() : 15, 10000);
    auto& file = impl_->log_file(*app);
    for (const auto& text : file.tail(n)) {
        auto* line = out.add_lines();
        if (auto parsed = detail::parse_log_line(text))
            *line = std::move(*parsed);
        else
            line->set_text(detail::valid_utf8(text));
    }
    out.set_path(file.path());
    return {};
}

std::error_code Supervisor::control(std::string_view op, const v1::ClusterCommand& command,
                                    bool privileged, v1::ClusterList& out, std::string& detail) {
    auto& m = *impl_;
    std::error_code ec;
    if (op != "ls") {
        if (op != "reload" && op != "restart" && op != "start" && op != "stop" && op != "scale" &&
            op != "delete") {
            detail = "no cluster command '" + std::string(op) + "'";
            return errc::no_responders;
        }
        if (!privileged) {
            detail = "only busd's own user controls its apps";
            return errc::forbidden;
        }
        if (m.stopping) {
            detail = "busd is stopping";
            return errc::request_failed;
        }
        if (op == "start" && !command.config().empty()) {
            // New apps, defined as in busd's config file (`bus cluster start FILE` and the
            // short form); relative paths are the requester's.
            std::vector<AppConfig> added;
            try {
                added = parse_apps(command.config(), "start", command.cwd());
            } catch (const ConfigError& e) {
                detail = e.what();
                return errc::request_failed;
            }
            if (added.empty()) {
                detail = "start: no [[app]] table";
                return errc::request_failed;
            }
            for (const auto& a : added)
                if (m.find_app(a.name)) {
                    detail = "an app named '" + a.name + "' exists (restart or delete it)";
                    return errc::request_failed;
                }
            for (auto& a : added)
                if ((ec = m.add_app(std::move(a), detail)))
                    return ec;
            out = list();
            return {};
        }
        App* app = command.app().empty() ? nullptr : m.find_app(command.app());
        if (!app && (op != "reload" || !command.app().empty())) {
            detail = command.app().empty() ? "which app?" : "no app named '" + command.app() + "'";
            return errc::request_failed;
        }
        if (op == "reload") {
            reload(command.app());
        } else if (op == "restart") {
            if (app->state == AppState::running)
                reload(app->config.name);
            else
                ec = m.start_app(*app, detail);
        } else if (op == "start") {
            ec = m.start_app(*app, detail);
        } else if (op == "stop") {
            if (app->state == AppState::errored)
                app->state = app->procs.empty() ? AppState::stopped : AppState::stopping;
            m.stop_app(*app, AppState::stopping);
            m.check_stopped(*app);
        } else if (op == "scale") {
            if (command.instances() < 1 || command.instances() > 1024) {
                detail = "instances must be between 1 and 1024";
                return errc::request_failed;
            }
            m.scale(*app, static_cast<int>(command.instances()));
        } else if (op == "delete") {
            if (app->state == AppState::errored)
                app->state = app->procs.empty() ? AppState::stopped : AppState::stopping;
            app->deleting = true;
            m.stop_app(*app, AppState::stopping);
            m.check_stopped(*app);
        }
        if (ec)
            return ec;
    }
    out = list();
    return {};
}

} // namespace bus::cluster
