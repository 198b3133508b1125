// The master side of cluster mode (docs/cluster.md): busd runs the applications of its config
// (`[[app]]` tables) as workers, owns their listening sockets and hands each accepted
// connection to one ready worker as NewConn with the fd (bus/cluster.hpp is the worker side).
//
// It supervises them: heartbeats (a stuck worker is killed and replaced), restarts with
// exponential backoff (an app whose workers keep dying young is marked errored and left
// stopped), zero-downtime reloads one worker at a time, and a graceful stop.
#pragma once

#include "bus/config_error.hpp"
#include "bus/error.hpp"
#include "bus/unique_fd.hpp"
#include "bus/v1/cluster.pb.h"

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <sys/types.h>

namespace bus::cluster {

using std::chrono::milliseconds;

// round_robin, least_connections: busd accepts and sends each connection to one worker.
// shared: every worker accepts on busd's listening socket (Node's SCHED_NONE); reuseport:
// every worker binds its own socket with SO_REUSEPORT and the kernel spreads connections.
enum class Mode { round_robin, least_connections, shared, reuseport };

struct RestartPolicy {
    // The app is errored after this many exits in a row, each within min_uptime of its start.
    int max_restarts = 10;
    milliseconds min_uptime{1000};
    // Backoff before a restart: restart_delay, doubled for each quick exit in a row, capped.
    milliseconds restart_delay{100};
    milliseconds max_restart_delay{10000};
    // Exit codes that mean "done": such a worker is not restarted.
    std::vector<int> stop_exit_codes;
};

struct AppConfig {
    std::string name;
    std::vector<std::string> argv; // command, then args
    std::string cwd;
    std::vector<std::string> env; // NAME=VALUE, besides BUS_APP and BUS_INSTANCE
    int instances = 1;
    std::vector<std::string> listen; // tcp://HOST:PORT
    Mode mode = Mode::round_robin;
    RestartPolicy restart;
    milliseconds kill_timeout{5000};   // Shutdown's grace; SIGKILL after it
    milliseconds listen_timeout{5000}; // a started worker must say ready within this
    milliseconds heartbeat{1000};      // ping interval
    int heartbeat_misses = 3;          // unanswered pings before the worker is replaced
    milliseconds ack_timeout{5000};    // a NewConn unacknowledged this long: worker replaced
    std::size_t max_pending = 1024;    // accepted connections waiting for a ready worker
    std::uint64_t max_memory = 0;      // resident bytes above which a worker is replaced; 0: none
    // Files or directories (their files, not recursively) whose content change reloads the
    // app: events are debounced, then the content hashed, so a save without a change or a burst
    // of saves makes one reload or none.
    std::vector<std::string> watch;
    milliseconds watch_debounce{300};
    // Workers' stdout and stderr: LOG_DIR/NAME.log, rotated past log_max_bytes, log_files kept
    // in all (NAME.log, NAME.log.1, ...). Empty log_dir: the supervisor's default.
    std::string log_dir;
    std::uint64_t log_max_bytes = 10 << 20;
    int log_files = 5;
};

// The `[[app]]` tables of busd's TOML config. Throws bus::ConfigError naming the key
// ("FILE: key 'app[0].instances': must be between 1 and 1024").
std::vector<AppConfig> load_apps(const std::string& path);
// The same from TOML text (`bus cluster start FILE` sends the file's text); `source` names it in
// errors. A relative `cwd` or `watch` path is taken relative to `base_dir` (when given), which is
// also the working directory of an app that names none.
std::vector<AppConfig> parse_apps(std::string_view text, const std::string& source,
                                  const std::string& base_dir = {});

// --- pure policy, unit-tested --------------------------------------------------------------

// Counts one instance's exits and says what to do about each.
class RestartTracker {
public:
    enum class Action { restart, stop, errored };
    struct Decision {
        Action action;
        milliseconds delay{0}; // for restart
    };
    Decision on_exit(const RestartPolicy& policy, int exit_code, int term_signal,
                     milliseconds uptime);
    int restarts() const noexcept { return restarts_; }
    int quick_exits() const noexcept { return quick_; }

private:
    int restarts_ = 0; // in all
    int quick_ = 0;    // in a row, each within min_uptime
};

struct Candidate {
    bool ready = false;
    std::uint32_t load = 0; // open connections (least_connections)
};

// The candidate to get the next connection, or none ready. `cursor` carries round-robin
// position between calls (ties in least_connections are broken round-robin too).
std::optional<std::size_t> pick(Mode mode, const std::vector<Candidate>& candidates,
                                std::size_t& cursor);

// --- the supervisor ------------------------------------------------------------------------

class Supervisor {
public:
    struct Options {
        // Added to every worker's environment (busd adds BUS_ENDPOINT).
        std::vector<std::string> env;
        // One line per event worth telling (worker started, exited, errored, ...).
        std::function<void(const std::string&)> log;
        // Where apps that name no log_dir keep their logs.
        std::string log_dir;
        // Each worker's link to the bus, beside its cluster channel: the worker gets one end
        // (BUS_CLIENT_FD, for Client::from_parent), this gets the other and the worker's pid
        // (busd hands it to its broker). Unset: workers get no link.
        std::function<void(UniqueFd socket, pid_t pid)> bus_link;
        // A Unix socket path where workers busd did not start join an app (Worker::join);
        // empty: none.
        std::string join_path;
        // Events for the bus: `$sys.cluster.errored` (a ClusterApp saying why), and each line a
        // worker writes on `$sys.log.APP` (a LogLine).
        std::function<void(const std::string& subject, const google::protobuf::Message& event)>
            event;
    };

    // Binds every app's listen addresses and starts its workers. On failure, `failed` (if
    // given) names the app and address.
    static Result<std::unique_ptr<Supervisor>> start(boost::asio::io_context& io,
                                                     std::vector<AppConfig> apps, Options options,
                                                     std::string* failed = nullptr);
    // Kills (SIGKILL) whatever still runs.
    ~Supervisor();
    Supervisor(const Supervisor&) = delete;
    Supervisor& operator=(const Supervisor&) = delete;

    // Zero-downtime reload of one app (empty: every app), one worker at a time. A reload asked
    // for while one runs is queued behind it. errc::no_such_client for an unknown app name.
    std::error_code reload(const std::string& app = {});
    // Stops accepting, shuts every worker down gracefully (SIGKILL after kill_timeout), then
    // calls `done` once all have exited.
    void stop(std::function<void()> done);

    // Every app, its state and its workers.
    v1::ClusterList list() const;

    // Control at run time (busd serves it on `$sys.cluster.<op>`): ls, reload, restart (a
    // reload when running, a start when stopped or errored), start (with `command.config`: new
    // apps from TOML text), stop, scale (`command.instances`), delete (stop, then forget). Only a
    // `privileged` requester (busd's own uid) may change anything. Fills `out` with the apps after
    // the command; on failure returns errc::forbidden, errc::no_responders (unknown op) or
    // errc::request_failed with `detail` (which busd's ERROR reply names "bad_request").
    std::error_code control(std::string_view op, const v1::ClusterCommand& command, bool privileged,
                            v1::ClusterList& out, std::string& detail);

    // `$sys.cluster.logs`: the last `command.lines` lines of the app's logs (busd's own uid only:
    // logs may hold what a worker should not show others).
    std::error_code logs(const v1::ClusterCommand& command, bool privileged, v1::LogTail& out,
                         std::string& detail);

private:
    struct Impl;
    explicit Supervisor(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

} // namespace bus::cluster
