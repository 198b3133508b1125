// The cluster master (docs/cluster.md). Per app: listeners, a bounded queue of accepted
// connections waiting for a worker, one slot per instance (its current worker, the one
// replacing it during a reload, its restart accounting) and every live worker process.
//
// The promise for accepted connections: busd keeps its copy of a connection's fd until the
// worker it was sent to acknowledges it. A worker that dies, is cut off, or refuses, gives its
// unacknowledged connections back to the front of the queue, but only once it has certainly
// exited (its pidfd said so): a worker that is being killed could still be touching them.
#include "bus/cluster_supervisor.hpp"

#include "bus/child_process.hpp"
#include "bus/v1/cluster.pb.h"
#include "cluster/join_server.hpp"
#include "cluster/logs.hpp"
#include "cluster/proc_stats.hpp"
#include "cluster/watch.hpp"
#include "cluster/wire.hpp"
#include "transport/sockets.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <sys/socket.h>

#include <fcntl.h>

#include <csignal>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <unistd.h>

namespace bus::cluster {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using detail::control_is;
using detail::send_control;

struct App;

struct Pending {
    UniqueFd fd;
    std::string peer;
    std::string local;
    std::uint64_t id = 0;
    Clock::time_point sent{};
};

struct Proc : std::enable_shared_from_this<Proc> {
    enum class State { starting, ready, draining };

    Proc(asio::io_context& io) : timer(io) {}
    ~Proc() {
        if (channel) {
            channel->on_message({});
            channel->on_disconnect({});
            channel->on_drain({});
        }
        if (joined)
            channel->close();
    }

    App* app = nullptr;
    int instance = 0;
    std::shared_ptr<ChildProcess> child; // busd's own worker; none when it joined
    std::shared_ptr<Channel> channel;    // the child's channel, or the joined connection
    // Joined (Worker::join): its pid from the kernel, and a pidfd that says when it exits.
    bool joined = false;
    pid_t joined_pid = 0;
    std::unique_ptr<asio::posix::stream_descriptor> exit_watch;
    bool exited = false;
    State state = State::starting;
    Clock::time_point started = Clock::now();
    std::map<std::uint64_t, Pending> in_flight; // sent, not acknowledged yet
    std::uint32_t reported_load = 0;            // last Load / Heartbeat answer
    std::uint32_t sent_since_report = 0;
    int unanswered_pings = 0;
    int listens_pending = 0; // Listen sent, Listening not yet back
    // Messages from it in this heartbeat interval, against what it could have reason to send.
    std::uint64_t window_messages = 0;
    std::uint64_t window_allowance = 0;
    bool congested = false;   // its channel is over the high-water mark
    bool refusing = false;    // refused a connection: none more until it says ready again
    bool cut = false;         // killed for misbehaving
    bool retiring = false;    // told to shut down: no restart when it exits
    bool replacement = false; // started in place of the slot's current worker
    bool over_memory = false; // above max_memory: its replacement is queued
    asio::steady_timer timer; // listen_timeout while starting, kill_timeout while draining

    pid_t pid() const { return child ? child->pid() : joined_pid; }
    bool running() const { return child ? child->running() : !exited; }
    const char* state_name() const {
        return state == State::starting ? "starting" : state == State::ready ? "ready" : "draining";
    }
};

struct Slot {
    explicit Slot(asio::io_context& io) : restart_timer(io) {}
    std::shared_ptr<Proc> current;  // the worker of this instance
    std::shared_ptr<Proc> incoming; // its replacement, until ready
    RestartTracker tracker;
    asio::steady_timer restart_timer;
    bool restart_scheduled = false;
    bool done = false; // exited with a stop exit code
};

struct Listener {
    Listener(asio::io_context& io, UniqueFd fd, std::string bound)
        : socket(io, fd.release()), address(std::move(bound)) {}
    asio::posix::stream_descriptor socket;
    std::string address; // as bound: tcp://HOST:PORT
    bool waiting = false;
    bool scheduled = false;
};

enum class AppState { running, stopping, stopped, errored };

struct App {
    explicit App(asio::io_context& io) : heartbeat_timer(io) {}
    AppConfig config;
    AppState state = AppState::running;
    std::string reason;    // why it is errored
    bool deleting = false; // `delete`: forgotten once stopped
    std::vector<std::unique_ptr<Listener>> listeners;
    std::deque<Pending> pending;
    std::vector<std::unique_ptr<Slot>> slots;
    std::list<std::shared_ptr<Proc>> procs; // every live worker process
    std::deque<int> reload_steps;           // instances still to replace, in order
    int reloading = -1;                     // instance being replaced now
    std::size_t cursor = 0;
    std::uint64_t next_id = 0;
    std::uint64_t ping_seq = 0;
    asio::steady_timer heartbeat_timer;
    std::unique_ptr<detail::FileWatch> watch; // when config.watch names files
    std::unique_ptr<detail::LogFile> logs;    // the workers' stdout and stderr
};

// A close-on-exec pipe (read end, write end); two empty fds when none can be made.
std::pair<UniqueFd, UniqueFd> pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) < 0)
        return {};
    return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

// Whether busd accepts and dispatches (else the workers accept themselves).
bool busd_accepts(Mode mode) {
    return mode == Mode::round_robin || mode == Mode::least_connections;
}

namespace {

// What `ls` and the `$sys.cluster.errored` event say of an app.
void describe(const App& a, v1::ClusterApp& info) {
    const auto now_steady = Clock::now();
    const auto now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
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
    for (const auto& p : a.procs) {
        auto* w = info.add_workers();
        w->set_instance(static_cast<std::uint32_t>(p->instance));
        w->set_joined(p->joined);
        w->set_pid(static_cast<std::uint32_t>(p->pid()));
        w->set_state(p->state_name());
        w->set_connections(p->reported_load + p->sent_since_report);
        w->set_started_unix_ns(
            now_ns -
            std::chrono::duration_cast<std::chrono::nanoseconds>(now_steady - p->started).count());
        w->set_rss_bytes(detail::rss_bytes(p->pid()));
        w->set_cpu_ms(detail::cpu_ms(p->pid()));
    }
}

} // namespace

struct Supervisor::Impl {
    asio::io_context& io;
    Supervisor::Options options;
    std::vector<std::unique_ptr<App>> apps;
    std::function<void()> stopped;
    bool stopping = false;
    std::unique_ptr<detail::JoinServer> joins; // when options.join_path is set
    // Handlers posted or armed on the loop hold this weakly: the supervisor may be gone.
    std::shared_ptr<int> alive = std::make_shared<int>(0);

    Impl(asio::io_context& io_, Supervisor::Options o) : io(io_), options(std::move(o)) {}

    void log(const std::string& line) {
        if (options.log)
            options.log(line);
    }
    static std::string who(const Proc& p) {
        return "app '" + p.app->config.name + "' " + (p.joined ? "joined worker " : "worker ") +
               std::to_string(p.instance) + " (pid " + std::to_string(p.pid()) + ")";
    }

    // --- accepting ---------------------------------------------------------------------------

    void arm(App& a, Listener& l) {
        if (l.waiting || l.scheduled || a.state != AppState::running ||
            !busd_accepts(a.config.mode))
            return;
        if (a.pending.size() >= a.config.max_pending)
            return; // resumed by dispatch(): connections wait in the kernel backlog meanwhile
        l.waiting = true;
        l.socket.async_wait(
            asio::posix::stream_descriptor::wait_read,
            [this, &a, &l, alive = std::weak_ptr<int>(alive)](boost::system::error_code ec) {
                if (ec || alive.expired() || a.state != AppState::running)
                    return;
                l.waiting = false;
                accept_batch(a, l);
            });
    }

    // Accepts until the backlog is empty, 64 at a time so the loop keeps turning.
    void accept_batch(App& a, Listener& l) {
        if (a.state != AppState::running)
            return;
        bool drained = false;
        for (int i = 0; i < 64 && a.pending.size() < a.config.max_pending; ++i) {
            sockaddr_storage ss{};
            socklen_t len = sizeof ss;
            const int fd = ::accept4(l.socket.native_handle(), reinterpret_cast<sockaddr*>(&ss),
                                     &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                    continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK)
                    log("app '" + a.config.name + "': accept on " + l.address + ": " +
                        std::strerror(errno));
                drained = errno == EAGAIN || errno == EWOULDBLOCK;
                if (!drained) {
                    // EMFILE and the like: try again a little later, not in a busy loop.
                    auto timer = std::make_shared<asio::steady_timer>(io, milliseconds(50));
                    l.scheduled = true;
                    timer->async_wait([this, &a, &l, timer, alive = std::weak_ptr<int>(alive)](
                                          boost::system::error_code ec) {
                        if (ec || alive.expired() || a.state != AppState::running)
                            return;
                        l.scheduled = false;
                        accept_batch(a, l);
                    });
                }
                break;
            }
            Pending c;
            c.fd = UniqueFd(fd);
            c.peer = bus::detail::address_text(ss);
            c.local = l.address.substr(6);
            c.id = ++a.next_id;
            a.pending.push_back(std::move(c));
        }
        dispatch(a);
        if (l.scheduled)
            return;
        if (drained)
            arm(a, l);
        else if (a.pending.size() < a.config.max_pending)
            schedule_accept(a, l); // more may wait: no new edge will say so
    }

    void schedule_accept(App& a, Listener& l) {
        if (l.scheduled || l.waiting)
            return;
        l.scheduled = true;
        asio::post(io, [this, &a, &l, alive = std::weak_ptr<int>(alive)] {
            if (alive.expired() || a.state != AppState::running)
                return; // the listener is gone with the app's running state
            l.scheduled = false;
            accept_batch(a, l);
        });
    }

    // --- dispatch ----------------------------------------------------------------------------

    void dispatch(App& a) {
        if (a.state != AppState::running)
            return;
        std::vector<Proc*> procs;
        std::vector<Candidate> candidates;
        for (auto& p : a.procs) {
            procs.push_back(p.get());
            candidates.push_back(
                {p->state == Proc::State::ready && !p->congested && !p->cut && !p->refusing,
                 p->reported_load + p->sent_since_report});
        }
        const bool was_full = a.pending.size() >= a.config.max_pending;
        while (!a.pending.empty()) {
            const auto chosen = pick(a.config.mode, candidates, a.cursor);
            if (!chosen)
                break;
            Proc& p = *procs[*chosen];
            Pending c = std::move(a.pending.front());
            a.pending.pop_front();
            v1::NewConn msg;
            msg.set_id(c.id);
            msg.set_app(a.config.name);
            msg.set_peer_address(c.peer);
            msg.set_local_address(c.local);
            // Borrowed: the channel dups it only if it must wait; ours stays open until the ack.
            const int fd = c.fd.get();
            c.sent = Clock::now();
            const auto id = c.id;
            p.in_flight.emplace(id, std::move(c));
            ++p.sent_since_report;
            p.window_allowance += 4;
            ++candidates[*chosen].load;
            if (!send_control(*p.channel, msg, Fds{fd})) {
                p.congested = true;
                candidates[*chosen].ready = false;
            }
        }
        if (was_full && a.pending.size() < a.config.max_pending)
            for (auto& l : a.listeners)
                schedule_accept(a, *l);
    }

    // Gives back a dead worker's unacknowledged connections, oldest first, at the front.
    void requeue(App& a, Proc& p) {
        for (auto it = p.in_flight.rbegin(); it != p.in_flight.rend(); ++it)
            a.pending.push_front(std::move(it->second));
        p.in_flight.clear();
    }

    // --- workers -----------------------------------------------------------------------------

    std::shared_ptr<Proc> spawn_worker(App& a, int instance, bool replacement) {
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
            log("app '" + a.config.name + "' worker " + std::to_string(instance) +
                ": cannot start " + a.config.argv[0] + ": " + child.error().message());
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
        return p;
    }

    // A new worker's channel (its messages, its end, room again after congestion), and the
    // time it has to say ready.
    void watch_worker(Proc& proc) {
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
    static std::uint64_t flood_allowance(const Proc& p) {
        return static_cast<std::uint64_t>(
            std::max<std::int64_t>(1000, p.app->config.heartbeat.count()));
    }

    // Kills a worker that cannot be trusted any more; on_exit replaces it.
    void cut(Proc& p, const std::string& why) {
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
    void leave(Proc& p, const std::string& why, bool wait_for_exit) {
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

    void on_message(Proc& p, Message& m) {
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
                log(who(p) + " refused connection " + std::to_string(ack.id()) + ": " +
                    ack.reason());
                p.refusing = true;
                a.pending.push_front(std::move(it->second));
                p.in_flight.erase(it);
                dispatch(a);
            }
        } else if (control_is(m, beat) && m.fds.empty()) {
            p.unanswered_pings = 0;
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
            cut(p, "sent a message that is not a cluster message (kind " +
                       std::to_string(m.kind()) + ", type '" + std::string(m.type_url()) + "', " +
                       std::to_string(m.fds.size()) + " fds)");
        }
    }

    // shared and reuseport: the worker accepts itself, on busd's socket or on its own.
    void send_listens(App& a, Proc& p) {
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
    void promote(App& a, Proc& p) {
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
    void retire(App& a, Proc& p, const std::string& why) {
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

    void on_exit(Proc& p, int code, int signal) {
        App& a = *p.app;
        auto self = p.shared_from_this();
        p.timer.cancel();
        a.procs.remove(self);
        if (!p.joined)
            log(who(p) + (signal ? " killed by signal " + std::to_string(signal)
                                 : " exited with code " + std::to_string(code)));
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

    void restart_after_exit(App& a, Slot& s, int instance, int code, int signal,
                            milliseconds uptime) {
        const auto d = s.tracker.on_exit(a.config.restart, code, signal, uptime);
        switch (d.action) {
        case RestartTracker::Action::stop:
            s.done = true;
            log("app '" + a.config.name + "' worker " + std::to_string(instance) +
                " exited with a stop exit code: not restarted");
            return;
        case RestartTracker::Action::errored:
            log("app '" + a.config.name + "' errored: worker " + std::to_string(instance) +
                " exited " + std::to_string(s.tracker.quick_exits()) +
                " times in a row within min_uptime (" +
                std::to_string(a.config.restart.min_uptime.count()) + " ms)");
            a.reason = "worker " + std::to_string(instance) + " exited " +
                       std::to_string(s.tracker.quick_exits()) +
                       " times in a row within min_uptime";
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
        s.restart_timer.async_wait([this, &a, &s, instance, alive = std::weak_ptr<int>(alive)](
                                       boost::system::error_code ec) {
            if (ec || alive.expired())
                return;
            s.restart_scheduled = false;
            if (a.state == AppState::running && !s.current)
                s.current = spawn_worker(a, instance, false);
            if (!s.current && a.state == AppState::running)
                restart_after_exit(a, s, instance, 127, 0, milliseconds(0));
        });
    }

    // --- reload ------------------------------------------------------------------------------

    // One instance replaced, new worker first, in turn with any reload.
    void queue_replacement(App& a, int instance) {
        if (std::find(a.reload_steps.begin(), a.reload_steps.end(), instance) ==
                a.reload_steps.end() &&
            a.reloading != instance)
            a.reload_steps.push_back(instance);
        next_reload_step(a);
    }

    void next_reload_step(App& a) {
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

    // --- heartbeats --------------------------------------------------------------------------

    void heartbeat(App& a) {
        a.heartbeat_timer.expires_after(a.config.heartbeat);
        a.heartbeat_timer.async_wait([this, &a, alive = std::weak_ptr<int>(alive)](
                                         boost::system::error_code ec) {
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

    // --- workers that join ---------------------------------------------------------------

    // A worker busd did not start, asking through the cluster socket to join an app: one of the
    // app's workers from now on, or the answer is why not (JoinServer::Admit).
    std::string adopt_joined(const v1::Join& join, std::shared_ptr<Channel> channel, pid_t pid,
                             UniqueFd pidfd) {
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

    // --- logs --------------------------------------------------------------------------------

    detail::LogFile& log_file(App& a) {
        if (!a.logs)
            a.logs = std::make_unique<detail::LogFile>(
                a.config.log_dir.empty() ? options.log_dir : a.config.log_dir, a.config.name,
                a.config.log_max_bytes, a.config.log_files);
        return *a.logs;
    }

    // Lines from one of a worker's pipes, until the worker and its children have closed it:
    // appended to the app's log file and published on `$sys.log.APP`.
    void capture(App& a, int instance, pid_t pid, const char* stream, UniqueFd pipe) {
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

    // --- stopping ----------------------------------------------------------------------------

    void stop_app(App& a, AppState final_state) {
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

    // --- control -----------------------------------------------------------------------------

    App* find_app(const std::string& name) {
        for (auto& a : apps)
            if (a->config.name == name)
                return a.get();
        return nullptr;
    }

    // A new app, started; on failure (an address it cannot bind) it is not kept.
    std::error_code add_app(AppConfig config, std::string& detail) {
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
                [this, &a](const std::string& line) {
                    log("app '" + a.config.name + "': " + line);
                },
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
    void erase_app(App& a) {
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
    std::error_code start_app(App& a, std::string& detail) {
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

    void scale(App& a, int n) {
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

    void check_stopped(App& a) {
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
};

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
