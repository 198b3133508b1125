// Worker processes (Supervisor::Impl, supervisor.hpp): starting one with its pipes and bus
// link, what it says on its channel (ready, acks, load, heartbeat answers), heartbeats and the
// flood limit, cutting off one that misbehaves, retiring one gracefully, and what its exit
// means (its connections back, a restart with backoff, or the app errored). A worker that
// joined through the cluster socket is adopted here too; busd neither restarts nor kills it.
#include "cluster/supervisor.hpp"

#include "cluster/proc_stats.hpp"
#include "cluster/wire.hpp"

#include <algorithm>
#include <csignal>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

namespace bus::cluster {

using detail::control_is;
using detail::send_control;

namespace {

// A close-on-exec pipe (read end, write end); two empty fds when none can be made.
std::pair<UniqueFd, UniqueFd> pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) < 0)
        return {};
    return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

} // namespace

std::shared_ptr<Proc> Supervisor::Impl::spawn_worker(App& a, int instance, bool replacement) {
    SpawnOptions so;
    so.cwd = a.config.cwd;
    so.env = options.env;
    so.env.insert(so.env.end(), a.config.env.begin(), a.config.env.end());
    so.env.push_back("BUS_APP=" + a.config.name);
    so.env.push_back("BUS_INSTANCE=" + std::to_string(instance));
    so.parent_death_signal = SIGTERM;
    // stdout and stderr: pipes busd reads into the app's log (a stream whose pipe cannot be
    // made goes to busd's own).
    auto [out_read, out_write] = pipe();
    auto [err_read, err_write] = pipe();
    so.stdout_fd = out_write.get();
    so.stderr_fd = err_write.get();
    // Its bus link, for Client::from_parent (the cluster channel is the Worker's).
    UniqueFd link_ours, link_theirs;
    if (options.bus_link) {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0) {
            link_ours = UniqueFd(sv[0]);
            link_theirs = UniqueFd(sv[1]);
            so.inherit.emplace_back(link_theirs.get(), so.channel_fd + 1);
            so.env.push_back("BUS_CLIENT_FD=" + std::to_string(so.channel_fd + 1));
        }
    }
    auto child = bus::spawn(io, a.config.argv, so);
    if (!child) {
        log("app '" + a.config.name + "' worker " + std::to_string(instance) + ": cannot start " +
            a.config.argv[0] + ": " + child.error().message());
        return nullptr;
    }
    auto p = std::make_shared<Proc>(io);
    p->app = &a;
    p->instance = instance;
    p->replacement = replacement;
    p->window_allowance = flood_allowance(*p);
    p->child = std::move(child).value();
    p->channel = p->child->channel();
    if (link_ours)
        options.bus_link(std::move(link_ours), p->pid());
    a.procs.push_back(p);
    if (out_read)
        capture(a, instance, p->pid(), "out", std::move(out_read));
    if (err_read)
        capture(a, instance, p->pid(), "err", std::move(err_read));
    watch_worker(*p);
    std::weak_ptr<Proc> weak = p;
    p->child->on_exit([this, weak](int code, int signal) {
        if (auto self = weak.lock())
            on_exit(*self, code, signal);
    });
    log(who(*p) + " started");
    worker_event("$sys.cluster.worker.started", *p, 0, 0);
    return p;
}

// A new worker's channel (its messages, its end, room again after congestion), and the
// time it has to say ready.
void Supervisor::Impl::watch_worker(Proc& proc) {
    std::weak_ptr<Proc> weak = proc.shared_from_this();
    proc.timer.expires_after(proc.app->config.listen_timeout);
    proc.timer.async_wait([this, weak](boost::system::error_code ec) {
        auto self = weak.lock();
        if (ec || !self || self->state != Proc::State::starting)
            return;
        cut(*self, "not ready within listen_timeout");
    });
    auto& channel = *proc.channel;
    channel.on_message([this, weak](Message& m) {
        if (auto self = weak.lock())
            on_message(*self, m);
    });
    channel.on_disconnect([this, weak](std::error_code ec) {
        auto self = weak.lock();
        if (!self || !self->running())
            return;
        // A joined worker gone from its channel has left (the Worker library acknowledges
        // each connection before its handler returns, so what it had not acknowledged was
        // still unread, and closed with its socket): what it had comes back now.
        if (self->joined)
            return leave(*self,
                         ec ? "its connection failed: " + ec.message() : "its connection ended",
                         false);
        if (ec)
            return cut(*self, "its channel failed: " + ec.message());
        // A clean end: usually the worker exiting. One that goes on running without
        // its channel is stopped like a retired one.
        self->refusing = true;
        if (!self->retiring)
            retire(*self->app, *self, "it closed its channel");
    });
    channel.on_drain([this, weak] {
        if (auto self = weak.lock()) {
            self->congested = false;
            dispatch(*self->app);
        }
    });
}

// What a worker may send in one heartbeat interval before it counts as flooding: a
// thousand a second (a Worker sends at most 100 load reports a second, one heartbeat
// answer, ...), plus, added as connections are sent, four per connection (its ack).
std::uint64_t Supervisor::Impl::flood_allowance(const Proc& p) {
    return static_cast<std::uint64_t>(
        std::max<std::int64_t>(1000, p.app->config.heartbeat.count()));
}

// Kills a worker that cannot be trusted any more; on_exit replaces it.
void Supervisor::Impl::cut(Proc& p, const std::string& why) {
    if (p.cut)
        return;
    p.cut = true;
    log(who(p) + " cut off: " + why);
    if (p.joined) // not busd's to kill: dropped, its connections back once it has exited
        return leave(p, "cut off", p.app->state == AppState::running);
    p.child->kill(SIGKILL);
}

// A joined worker leaves the app: busd closes its end and forgets it, at once or (when it
// may still hold connections it was sent) once its pidfd says it has exited.
void Supervisor::Impl::leave(Proc& p, const std::string& why, bool wait_for_exit) {
    if (p.exited)
        return;
    p.channel->close();
    if (wait_for_exit && p.exit_watch) {
        log(who(p) + " dropped (" + why + "); its connections wait for its exit");
        return;
    }
    log(who(p) + " left (" + why + ")");
    p.exited = true;
    on_exit(p, -1, 0);
}

void Supervisor::Impl::on_message(Proc& p, Message& m) {
    App& a = *p.app;
    v1::NewConnAck ack;
    v1::Heartbeat beat;
    v1::Ready ready;
    v1::Load load;
    v1::RequestReplacement replace;
    v1::Listening listening;
    if (p.cut)
        return;
    // A worker has reason to send an ack per connection, a load report per change and
    // a heartbeat answer; far more than that is a flood.
    if (++p.window_messages > p.window_allowance)
        return cut(p, "floods its channel (" + std::to_string(p.window_messages) +
                          " messages in one heartbeat interval)");
    if (control_is(m, ack) && m.fds.empty()) {
        auto it = p.in_flight.find(ack.id());
        if (it == p.in_flight.end())
            return cut(p, "acknowledged connection " + std::to_string(ack.id()) +
                              ", which it was not given");
        if (ack.accepted()) {
            p.in_flight.erase(it); // closes our copy
        } else {
            // Given back: it goes to another worker, and this one gets no more until it
            // says ready again.
            log(who(p) + " refused connection " + std::to_string(ack.id()) + ": " + ack.reason());
            p.refusing = true;
            a.pending.push_front(std::move(it->second));
            p.in_flight.erase(it);
            dispatch(a);
        }
    } else if (control_is(m, beat) && m.fds.empty()) {
        p.unanswered_pings = 0;
        p.last_answer = Clock::now();
        p.reported_load = beat.connections();
        p.sent_since_report = static_cast<std::uint32_t>(p.in_flight.size());
    } else if (control_is(m, load) && m.fds.empty()) {
        p.reported_load = load.connections();
        p.sent_since_report = static_cast<std::uint32_t>(p.in_flight.size());
    } else if (control_is(m, ready) && m.fds.empty()) {
        if (p.state != Proc::State::starting) {
            p.refusing = false;
            return dispatch(a);
        }
        p.timer.cancel();
        p.state = Proc::State::ready;
        log(who(p) + " ready");
        send_listens(a, p);
        // In shared and reuseport modes it takes the old one's place once it accepts.
        if (p.replacement && p.listens_pending == 0)
            promote(a, p);
        dispatch(a);
    } else if (control_is(m, listening) && m.fds.empty()) {
        if (!listening.error().empty())
            return cut(p, "cannot listen on " + listening.address() + ": " + listening.error());
        log(who(p) + " accepting on " + listening.address());
        if (p.listens_pending > 0 && --p.listens_pending == 0 && p.replacement)
            promote(a, p);
    } else if (control_is(m, replace) && m.fds.empty()) {
        log(who(p) + " asks to be replaced: " + replace.reason());
        if (p.joined) // busd cannot start its like: it only stops taking connections
            return retire(a, p, "asked to be replaced; busd did not start it");
        queue_replacement(a, p.instance);
    } else {
        cut(p, "sent a message that is not a cluster message (kind " + std::to_string(m.kind()) +
                   ", type '" + std::string(m.type_url()) + "', " + std::to_string(m.fds.size()) +
                   " fds)");
    }
}

// shared and reuseport: the worker accepts itself, on busd's socket or on its own.
void Supervisor::Impl::send_listens(App& a, Proc& p) {
    if (a.config.mode == Mode::shared) {
        for (auto& l : a.listeners) {
            v1::Listen listen;
            listen.set_address(l->address);
            send_control(*p.channel, listen, Fds{l->socket.native_handle()});
            ++p.listens_pending;
        }
    } else if (a.config.mode == Mode::reuseport) {
        for (const auto& address : a.config.listen) {
            v1::Listen listen;
            listen.set_address(address);
            listen.set_reuseport(true);
            send_control(*p.channel, listen);
            ++p.listens_pending;
        }
    }
}

// A replacement said ready: it becomes its slot's worker and the old one drains.
void Supervisor::Impl::promote(App& a, Proc& p) {
    Slot& s = *a.slots[p.instance];
    auto old = std::move(s.current);
    s.current = std::move(s.incoming);
    p.replacement = false;
    if (old)
        retire(a, *old, "replaced");
    if (a.reloading == p.instance) {
        a.reloading = -1;
        next_reload_step(a);
    }
}

// No more connections; Shutdown{grace}; SIGKILL after kill_timeout.
void Supervisor::Impl::retire(App& a, Proc& p, const std::string& why) {
    if (p.retiring)
        return;
    p.retiring = true;
    p.state = Proc::State::draining;
    v1::Shutdown stop;
    stop.set_grace_ms(static_cast<std::uint32_t>(a.config.kill_timeout.count()));
    stop.set_reason(why);
    send_control(*p.channel, stop);
    p.timer.cancel();
    p.timer.expires_after(a.config.kill_timeout);
    std::weak_ptr<Proc> weak = p.shared_from_this();
    p.timer.async_wait([this, weak](boost::system::error_code ec) {
        auto self = weak.lock();
        if (ec || !self || !self->running())
            return;
        if (self->joined) // a stopping busd does not wait for it
            return leave(*self, "still there after kill_timeout",
                         self->app->state == AppState::running);
        log(who(*self) + " still running after kill_timeout: SIGKILL");
        self->child->kill(SIGKILL);
    });
    log(who(p) + " shutting down (" + why + ")");
    // Its unacknowledged connections come back when it has exited; the others may
    // go on being dispatched meanwhile.
}

void Supervisor::Impl::on_exit(Proc& p, int code, int signal) {
    App& a = *p.app;
    auto self = p.shared_from_this();
    p.timer.cancel();
    a.procs.remove(self);
    if (!p.joined)
        log(who(p) + (signal ? " killed by signal " + std::to_string(signal)
                             : " exited with code " + std::to_string(code)));
    worker_event("$sys.cluster.worker.exited", p, code, signal);
    if (a.state == AppState::running)
        requeue(a, p);
    else
        p.in_flight.clear();
    if (p.joined) { // not busd's to restart
        dispatch(a);
        return check_stopped(a);
    }
    Slot& s = *a.slots[p.instance];
    const auto uptime = std::chrono::duration_cast<milliseconds>(Clock::now() - p.started);
    if (s.incoming.get() == &p) {
        // A replacement that never became ready: the old worker stays.
        s.incoming.reset();
        log("app '" + a.config.name + "' worker " + std::to_string(p.instance) +
            ": its replacement failed; the old worker stays");
        if (!s.current && a.state == AppState::running && p.instance < a.config.instances)
            restart_after_exit(a, s, p.instance, code, signal, uptime);
        if (a.reloading == p.instance) {
            a.reloading = -1;
            next_reload_step(a);
        }
    } else if (s.current.get() == &p) {
        s.current.reset();
        if (a.state == AppState::running && !s.incoming && p.instance < a.config.instances)
            restart_after_exit(a, s, p.instance, code, signal, uptime);
    }
    dispatch(a);
    check_stopped(a);
}

void Supervisor::Impl::restart_after_exit(App& a, Slot& s, int instance, int code, int signal,
                                          milliseconds uptime) {
    const auto d = s.tracker.on_exit(a.config.restart, code, signal, uptime);
    switch (d.action) {
    case RestartTracker::Action::stop:
        s.done = true;
        log("app '" + a.config.name + "' worker " + std::to_string(instance) +
            " exited with a stop exit code: not restarted");
        return;
    case RestartTracker::Action::errored:
        log("app '" + a.config.name + "' errored: worker " + std::to_string(instance) + " exited " +
            std::to_string(s.tracker.quick_exits()) + " times in a row within min_uptime (" +
            std::to_string(a.config.restart.min_uptime.count()) + " ms)");
        a.reason = "worker " + std::to_string(instance) + " exited " +
                   std::to_string(s.tracker.quick_exits()) + " times in a row within min_uptime";
        stop_app(a, AppState::errored);
        if (options.event) {
            v1::ClusterApp event;
            describe(a, event);
            options.event("$sys.cluster.errored", event);
        }
        return;
    case RestartTracker::Action::restart:
        break;
    }
    s.restart_scheduled = true;
    s.restart_timer.expires_after(d.delay);
    s.restart_timer.async_wait(
        [this, &a, &s, instance, alive = std::weak_ptr<int>(alive)](boost::system::error_code ec) {
            if (ec || alive.expired())
                return;
            s.restart_scheduled = false;
            if (a.state == AppState::running && !s.current)
                s.current = spawn_worker(a, instance, false);
            if (!s.current && a.state == AppState::running)
                restart_after_exit(a, s, instance, 127, 0, milliseconds(0));
        });
}

void Supervisor::Impl::heartbeat(App& a) {
    a.heartbeat_timer.expires_after(a.config.heartbeat);
    a.heartbeat_timer.async_wait(
        [this, &a, alive = std::weak_ptr<int>(alive)](boost::system::error_code ec) {
            if (ec || alive.expired() || a.state != AppState::running)
                return;
            const auto now = Clock::now();
            std::vector<std::shared_ptr<Proc>> procs(a.procs.begin(), a.procs.end());
            for (auto& p : procs) {
                if (p->cut)
                    continue;
                p->window_messages = 0;
                p->window_allowance = flood_allowance(*p);
                if (!p->in_flight.empty()) {
                    auto oldest = p->in_flight.begin()->second.sent;
                    for (auto& [id, c] : p->in_flight)
                        oldest = std::min(oldest, c.sent);
                    if (now - oldest > a.config.ack_timeout) {
                        cut(*p, "did not acknowledge a connection within ack_timeout");
                        continue;
                    }
                }
                if (p->state != Proc::State::ready)
                    continue;
                if (a.config.max_memory && !p->over_memory && !p->retiring && !p->joined &&
                    a.slots[p->instance]->current == p) {
                    if (const auto rss = detail::rss_bytes(p->pid()); rss > a.config.max_memory) {
                        p->over_memory = true;
                        log(who(*p) + " uses " + std::to_string(rss >> 20) +
                            " MiB, above max_memory: replacing it");
                        queue_replacement(a, p->instance);
                    }
                }
                if (p->unanswered_pings >= a.config.heartbeat_misses) {
                    cut(*p, std::to_string(p->unanswered_pings) + " heartbeats unanswered");
                    continue;
                }
                v1::Heartbeat beat;
                beat.set_seq(++a.ping_seq);
                beat.set_sent_unix_ns(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
                ++p->unanswered_pings;
                send_control(*p->channel, beat);
            }
            heartbeat(a);
        });
}

std::string Supervisor::Impl::adopt_joined(const v1::Join& join, std::shared_ptr<Channel> channel,
                                           pid_t pid, UniqueFd pidfd) {
    App* found = find_app(join.app());
    if (!found)
        return "no app named '" + join.app() + "'";
    if (found->state != AppState::running || found->deleting)
        return "app '" + join.app() + "' is not running";
    App& a = *found;
    // The lowest instance number no worker of the app has, from the app's own count up.
    int instance = std::max(a.config.instances, static_cast<int>(a.slots.size()));
    for (bool taken = true; taken; instance += taken) {
        taken = false;
        for (const auto& p : a.procs)
            taken = taken || p->instance == instance;
    }
    auto p = std::make_shared<Proc>(io);
    p->app = &a;
    p->instance = instance;
    p->joined = true;
    p->joined_pid = pid;
    p->channel = std::move(channel);
    p->window_allowance = flood_allowance(*p);
    a.procs.push_back(p);
    watch_worker(*p);
    if (pidfd) {
        p->exit_watch = std::make_unique<asio::posix::stream_descriptor>(io, pidfd.release());
        std::weak_ptr<Proc> weak = p;
        p->exit_watch->async_wait(asio::posix::stream_descriptor::wait_read,
                                  [this, weak](boost::system::error_code ec) {
                                      auto self = weak.lock();
                                      if (ec || !self || self->exited)
                                          return;
                                      log(who(*self) + " exited");
                                      self->exited = true;
                                      self->channel->close();
                                      on_exit(*self, -1, 0);
                                  });
    }
    v1::JoinAck ack;
    ack.set_accepted(true);
    ack.set_instance(static_cast<std::uint32_t>(instance));
    send_control(*p->channel, ack);
    log(who(*p) + " joined");
    return {};
}

// Lines from one of a worker's pipes, until the worker and its children have closed it:
// appended to the app's log file and published on `$sys.log.APP`.
void Supervisor::Impl::capture(App& a, int instance, pid_t pid, const char* stream, UniqueFd pipe) {
    const std::string app = a.config.name;
    detail::OutputReader::start(
        io, std::move(pipe),
        [this, app, subject = "$sys.log." + app, instance, pid, stream,
         alive = std::weak_ptr<int>(alive)](std::vector<std::string>& lines) {
            if (alive.expired())
                return;
            App* owner = find_app(app); // by name: the app may have been deleted since
            if (!owner)
                return;
            const auto now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
            v1::LogLine line;
            line.set_app(app);
            line.set_instance(static_cast<std::uint32_t>(instance));
            line.set_pid(static_cast<std::uint32_t>(pid));
            line.set_stream(stream);
            line.set_unix_ns(now);
            std::string text;
            for (auto& raw : lines) {
                line.set_text(detail::valid_utf8(raw));
                text += detail::format_log_line(line);
                text += '\n';
                if (options.event)
                    options.event(subject, line);
            }
            log_file(*owner).append(text, [this](const std::string& error) { log(error); });
        });
}

} // namespace bus::cluster
