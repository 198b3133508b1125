// Supervisor and its apps (Supervisor::Impl, supervisor.hpp): adding, starting, stopping,
// scaling and deleting an app, the queue of reload steps (one instance replaced at a time), and
// the public entry points but the `$sys.cluster.*` ones (control.cpp).
#include "cluster/supervisor.hpp"

#include "transport/sockets.hpp"

#include <boost/asio/post.hpp>

#include <algorithm>

namespace bus::cluster {

App* Supervisor::Impl::find_app(const std::string& name) {
    for (auto& a : apps)
        if (a->config.name == name)
            return a.get();
    return nullptr;
}

// A new app, started; on failure (an address it cannot bind) it is not kept.
std::error_code Supervisor::Impl::add_app(AppConfig config, std::string& detail) {
    if (find_app(config.name)) {
        detail = "an app named '" + config.name + "' exists (restart or delete it)";
        return errc::request_failed;
    }
    auto owned = std::make_unique<App>(io);
    App& a = *owned;
    a.config = std::move(config);
    a.state = AppState::stopped;
    apps.push_back(std::move(owned));
    if (const auto ec = start_app(a, detail)) {
        apps.pop_back();
        return ec;
    }
    if (!a.config.watch.empty())
        a.watch = detail::FileWatch::start(
            io, a.config.watch, a.config.watch_debounce,
            [this, &a](const std::string& line) { log("app '" + a.config.name + "': " + line); },
            [this, &a] {
                if (a.state != AppState::running)
                    return;
                for (int i = 0; i < a.config.instances; ++i)
                    queue_replacement(a, i);
                log("app '" + a.config.name + "': reload queued");
            });
    return {};
}

// `delete`: stopped first (gracefully), forgotten once its last worker has exited. Every
// handler armed for it holds a reference to it, so it goes only after they have run: its
// timers and descriptors are cancelled now, and their (aborted) completions are queued
// before the posted erase.
void Supervisor::Impl::erase_app(App& a) {
    a.deleting = false;
    a.heartbeat_timer.cancel();
    if (a.watch)
        a.watch->stop();
    for (auto& s : a.slots)
        s->restart_timer.cancel();
    log("app '" + a.config.name + "' deleted");
    asio::post(io, [this, &a, alive = std::weak_ptr<int>(alive)] {
        if (alive.expired())
            return;
        std::erase_if(apps, [&](const std::unique_ptr<App>& app) { return app.get() == &a; });
    });
}

// Binds the listeners and starts every instance of a stopped or errored app.
std::error_code Supervisor::Impl::start_app(App& a, std::string& detail) {
    if (a.state == AppState::running)
        return {};
    if (a.state == AppState::stopping) {
        detail = "app '" + a.config.name + "' is still stopping";
        return errc::request_failed;
    }
    std::vector<std::unique_ptr<Listener>> listeners;
    for (const auto& address : a.config.listen) {
        if (a.config.mode == Mode::reuseport)
            break; // the workers bind
        auto fd = bus::detail::listen_tcp(address, false);
        if (!fd) {
            detail = "cannot listen on " + address + ": " + fd.error().message();
            return errc::request_failed;
        }
        const std::string bound = "tcp://" + bus::detail::local_address_text(fd.value().get());
        listeners.push_back(std::make_unique<Listener>(io, std::move(fd).value(), bound));
    }
    a.listeners = std::move(listeners);
    a.state = AppState::running;
    a.reason.clear();
    log("app '" + a.config.name + "' starting");
    for (auto& l : a.listeners)
        log("app '" + a.config.name + "' listening on " + l->address);
    while (a.slots.size() < static_cast<std::size_t>(a.config.instances))
        a.slots.push_back(std::make_unique<Slot>(io));
    for (int i = 0; i < a.config.instances; ++i) {
        Slot& s = *a.slots[i];
        s.tracker = RestartTracker();
        s.done = false;
        if (!s.current && !s.restart_scheduled) {
            s.current = spawn_worker(a, i, false);
            if (!s.current)
                restart_after_exit(a, s, i, 127, 0, milliseconds(0));
        }
    }
    for (auto& l : a.listeners)
        arm(a, *l);
    heartbeat(a);
    return {};
}

void Supervisor::Impl::stop_app(App& a, AppState final_state) {
    if (a.state != AppState::running)
        return;
    a.state = final_state == AppState::errored ? AppState::errored : AppState::stopping;
    a.heartbeat_timer.cancel();
    a.listeners.clear();
    a.pending.clear(); // closes them: the clients see the connection end, not a hang
    a.reload_steps.clear();
    a.reloading = -1;
    for (auto& s : a.slots) {
        s->restart_timer.cancel();
        s->restart_scheduled = false;
    }
    std::vector<std::shared_ptr<Proc>> procs(a.procs.begin(), a.procs.end());
    for (auto& p : procs)
        retire(a, *p, final_state == AppState::errored ? "app errored" : "stopping");
    check_stopped(a);
}

void Supervisor::Impl::scale(App& a, int n) {
    const int old = a.config.instances;
    a.config.instances = n;
    log("app '" + a.config.name + "': scaling from " + std::to_string(old) + " to " +
        std::to_string(n) + " instances");
    if (a.state != AppState::running)
        return;
    while (a.slots.size() < static_cast<std::size_t>(n))
        a.slots.push_back(std::make_unique<Slot>(io));
    for (int i = 0; i < n; ++i) {
        Slot& s = *a.slots[i];
        if (!s.current && !s.incoming && !s.restart_scheduled) {
            s.tracker = RestartTracker();
            s.done = false;
            s.current = spawn_worker(a, i, false);
            if (!s.current)
                restart_after_exit(a, s, i, 127, 0, milliseconds(0));
        }
    }
    for (std::size_t i = static_cast<std::size_t>(n); i < a.slots.size(); ++i) {
        Slot& s = *a.slots[i];
        s.restart_timer.cancel();
        s.restart_scheduled = false;
        if (s.incoming)
            retire(a, *s.incoming, "scaled down");
        if (s.current)
            retire(a, *s.current, "scaled down");
    }
}

void Supervisor::Impl::check_stopped(App& a) {
    if (a.state == AppState::stopping && a.procs.empty()) {
        a.state = AppState::stopped;
        log("app '" + a.config.name + "' stopped");
    }
    if (a.deleting && a.state != AppState::stopping)
        erase_app(a);
    if (!stopping || !stopped)
        return;
    for (auto& app : apps)
        if (!app->procs.empty())
            return;
    auto done = std::move(stopped);
    stopped = nullptr;
    asio::post(io, std::move(done));
}

// One instance replaced, new worker first, in turn with any reload.
void Supervisor::Impl::queue_replacement(App& a, int instance) {
    if (std::find(a.reload_steps.begin(), a.reload_steps.end(), instance) == a.reload_steps.end() &&
        a.reloading != instance)
        a.reload_steps.push_back(instance);
    next_reload_step(a);
}

void Supervisor::Impl::next_reload_step(App& a) {
    while (a.reloading < 0 && !a.reload_steps.empty() && a.state == AppState::running) {
        const int i = a.reload_steps.front();
        a.reload_steps.pop_front();
        if (i >= a.config.instances)
            continue; // scaled down meanwhile
        Slot& s = *a.slots[i];
        if (s.incoming)
            continue;
        if (!s.current) {
            // Nothing to replace (it is being restarted, or done): start it now.
            if (!s.restart_scheduled) {
                s.done = false;
                s.current = spawn_worker(a, i, false);
            }
            continue;
        }
        s.incoming = spawn_worker(a, i, true);
        if (s.incoming) {
            a.reloading = i;
            log("app '" + a.config.name + "': replacing worker " + std::to_string(i));
        }
    }
}

detail::LogFile& Supervisor::Impl::log_file(App& a) {
    if (!a.logs)
        a.logs = std::make_unique<detail::LogFile>(
            a.config.log_dir.empty() ? options.log_dir : a.config.log_dir, a.config.name,
            a.config.log_max_bytes, a.config.log_files);
    return *a.logs;
}

Supervisor::Supervisor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Supervisor::~Supervisor() {
    impl_->joins.reset(); // closes the cluster socket and removes its file
    // ChildProcess's destructor kills (SIGKILL) and reaps whatever still runs.
    for (auto& a : impl_->apps) {
        a->procs.clear();
        for (auto& s : a->slots) {
            s->current.reset();
            s->incoming.reset();
        }
    }
}

Result<std::unique_ptr<Supervisor>> Supervisor::start(asio::io_context& io,
                                                      std::vector<AppConfig> apps, Options options,
                                                      std::string* failed) {
    std::unique_ptr<Supervisor> s(new Supervisor(std::make_unique<Impl>(io, std::move(options))));
    if (const auto& path = s->impl_->options.join_path; !path.empty()) {
        Impl& m = *s->impl_;
        auto joins = detail::JoinServer::listen(
            io, path, [&m](const std::string& line) { m.log(line); },
            [&m](const v1::Join& join, std::shared_ptr<Channel> channel, pid_t pid,
                 UniqueFd pidfd) {
                return m.adopt_joined(join, std::move(channel), pid, std::move(pidfd));
            });
        if (!joins) {
            if (failed)
                *failed = "cluster socket " + path + ": " + joins.error().message();
            return joins.error();
        }
        m.joins = std::move(joins).value();
    }
    for (auto& config : apps) {
        const std::string name = config.name;
        std::string detail;
        if (const auto ec = s->impl_->add_app(std::move(config), detail)) {
            if (failed)
                *failed = "app '" + name + "': " + detail;
            return ec;
        }
    }
    return s;
}

std::error_code Supervisor::reload(const std::string& name) {
    bool found = false;
    for (auto& a : impl_->apps) {
        if (!name.empty() && a->config.name != name)
            continue;
        found = true;
        if (a->state != AppState::running)
            continue;
        for (int i = 0; i < a->config.instances; ++i)
            a->reload_steps.push_back(i);
        impl_->log("app '" + a->config.name + "': reload queued");
        impl_->next_reload_step(*a);
    }
    return found || name.empty() ? std::error_code{} : make_error_code(errc::no_such_client);
}

void Supervisor::stop(std::function<void()> done) {
    impl_->stopping = true;
    impl_->stopped = std::move(done);
    for (auto& a : impl_->apps)
        impl_->stop_app(*a, AppState::stopping);
    if (impl_->apps.empty() && impl_->stopped) {
        auto cb = std::move(impl_->stopped);
        impl_->stopped = nullptr;
        asio::post(impl_->io, std::move(cb));
    } else {
        for (auto& a : impl_->apps)
            impl_->check_stopped(*a);
    }
}

} // namespace bus::cluster
