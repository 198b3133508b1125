// The cluster master's state (docs/cluster.md), shared by the files of Supervisor::Impl. Per app:
// listeners, a bounded queue of accepted connections waiting for a worker, one slot per instance
// (its current worker, the one replacing it during a reload, its restart accounting) and every
// live worker process (a Proc, whether busd started it or it joined).
//
// The promise for accepted connections: busd keeps its copy of a connection's fd until the
// worker it was sent to acknowledges it. A worker that dies, is cut off, or refuses, gives its
// unacknowledged connections back to the front of the queue, but only once it has certainly
// exited (its pidfd said so): a worker that is being killed could still be touching them.
//
// Where each part of Impl is:
//   supervisor.cpp  apps: start, stop, scale, delete, reload; Supervisor's own entry points
//   proc.cpp        worker processes: spawn, channel messages, heartbeats, cut off, retire,
//                   exit and restart, and adopting one that joined; their output into the logs
//   dispatch.cpp    accepting on an app's listeners and handing each connection to a worker
//   control.cpp     the `$sys.cluster.*` requests: ls, the commands, logs
// and the parts with an interface of their own: watch.hpp (reload on change), join_server.hpp
// (the cluster socket), proc_stats.hpp (memory and CPU from /proc), logs.hpp (log files).
#pragma once

#include "bus/channel.hpp"
#include "bus/child_process.hpp"
#include "bus/cluster_supervisor.hpp"
#include "bus/unique_fd.hpp"
#include "bus/v1/cluster.pb.h"
#include "cluster/join_server.hpp"
#include "cluster/logs.hpp"
#include "cluster/watch.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <sys/types.h>

namespace bus::cluster {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

struct App;

// An accepted connection, waiting in its app's queue or sent to a worker (in_flight).
struct Pending {
    UniqueFd fd;
    std::string peer;
    std::string local;
    std::uint64_t id = 0;
    Clock::time_point sent{};
};

// One worker process as busd sees it.
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
    Clock::time_point last_answer = started;    // its last heartbeat answer
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

// What `ls` and the `$sys.cluster.errored` event say of an app (control.cpp).
void describe(const App& a, v1::ClusterApp& info);
void describe(const Proc& p, v1::ClusterWorker& info);

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
    // `$sys.cluster.worker.started` / `.exited`: `code` and `signal` as the exit gave them.
    void worker_event(const char* subject, const Proc& p, int code, int signal) {
        if (!options.event)
            return;
        v1::WorkerEvent event;
        event.set_app(p.app->config.name);
        describe(p, *event.mutable_worker());
        event.set_exit_code(code);
        event.set_signal(signal);
        options.event(subject, event);
    }
    static std::string who(const Proc& p) {
        return "app '" + p.app->config.name + "' " + (p.joined ? "joined worker " : "worker ") +
               std::to_string(p.instance) + " (pid " + std::to_string(p.pid()) + ")";
    }

    // --- apps (supervisor.cpp) -----------------------------------------------------------------

    App* find_app(const std::string& name);
    std::error_code add_app(AppConfig config, std::string& detail);
    std::error_code start_app(App& a, std::string& detail);
    void stop_app(App& a, AppState final_state);
    void scale(App& a, int n);
    void erase_app(App& a);
    void check_stopped(App& a);
    void queue_replacement(App& a, int instance);
    void next_reload_step(App& a);
    detail::LogFile& log_file(App& a);

    // --- worker processes (proc.cpp) -----------------------------------------------------------

    std::shared_ptr<Proc> spawn_worker(App& a, int instance, bool replacement);
    // A worker busd did not start, asking through the cluster socket to join an app: one of the
    // app's workers from now on, or the answer is why not (JoinServer::Admit).
    std::string adopt_joined(const v1::Join& join, std::shared_ptr<Channel> channel, pid_t pid,
                             UniqueFd pidfd);
    void watch_worker(Proc& proc);
    static std::uint64_t flood_allowance(const Proc& p);
    void on_message(Proc& p, Message& m);
    void send_listens(App& a, Proc& p);
    void promote(App& a, Proc& p);
    void cut(Proc& p, const std::string& why);
    void leave(Proc& p, const std::string& why, bool wait_for_exit);
    void retire(App& a, Proc& p, const std::string& why);
    void on_exit(Proc& p, int code, int signal);
    void restart_after_exit(App& a, Slot& s, int instance, int code, int signal,
                            milliseconds uptime);
    void heartbeat(App& a);
    void capture(App& a, int instance, pid_t pid, const char* stream, UniqueFd pipe);

    // --- connections (dispatch.cpp) ------------------------------------------------------------

    void arm(App& a, Listener& l);
    void accept_batch(App& a, Listener& l);
    void schedule_accept(App& a, Listener& l);
    void dispatch(App& a);
    void requeue(App& a, Proc& p);
};

} // namespace bus::cluster
