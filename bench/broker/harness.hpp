// The processes of broker-bench: the roles it forks (publishers, subscribers, requesters,
// responders), the servers it starts (busd, nats-server, dbus-daemon, dbus-broker, a zmq_proxy),
// and the janitor that stops them all and removes what they left, however the bench ends.
//
// Processes: the bench is a child subreaper, so the servers' own children (dbus-broker under
// dbus-broker-launch) come back to it and are reaped. Every server runs in a process group of
// its own, registered with the janitor; every forked role dies with the bench (PDEATHSIG).
// The janitor is forked first and holds only its command pipe: when that pipe closes (the bench
// returned, threw, or was killed, even with SIGKILL) it kills every group still registered and
// removes every path still registered, including the journal socket it may have created.
//
// Clocks: steady_clock is CLOCK_MONOTONIC, one clock for every process on the machine, so the
// times that roles report (first and last message, start and end of publishing) compare.
#pragma once

#include "common/process.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <sys/types.h>

namespace bench::broker {

using Clock = std::chrono::steady_clock;

// CLOCK_MONOTONIC in seconds.
double now_s();

// --- the janitor ----------------------------------------------------------------------------

namespace janitor {
// Forks the janitor. Call before any other child exists.
void start();
void track_group(pid_t pgid);
void untrack_group(pid_t pgid);
void track_path(const std::string& path);
void untrack_path(const std::string& path);
// Makes sure /run/systemd/journal/socket exists (dbus-broker-launch logs there and will not
// start without it). If it did not, the janitor creates it, drains what arrives, and removes
// it (and the directories it had to create) at the end.
void ensure_journal_socket();
// The normal end: the janitor cleans up and exits; returns once it has.
void stop();
} // namespace janitor

// --- forked roles ---------------------------------------------------------------------------

// A role's side of its pipes to the bench: it says "ready" when it is set up, and its result
// (one JSON object) when it is done; the bench sends it lines ("done N").
class RoleIo {
public:
    RoleIo(int out, int in) : out_(out), in_(in) {}
    void ready();
    void result(const nlohmann::json& value);
    int control_fd() const { return in_; }
    // Reads what has arrived without blocking; calls `on_line` per complete line. False once
    // the bench closed the pipe.
    bool read_control(const std::function<void(const std::string&)>& on_line);
    // Blocks until a line arrives (or the pipe closes: empty).
    std::string wait_control();

private:
    int out_, in_;
    std::string buffer_;
};

class Child {
public:
    Child() = default;
    Child(Child&&) noexcept;
    Child& operator=(Child&&) noexcept;
    ~Child(); // kills and reaps a child still running

    // The next line the child wrote, parsed; throws on timeout, on EOF, and if the child
    // reported {"error": ...}.
    nlohmann::json read(double timeout_s);
    void send(const std::string& line);
    // Waits for the exit; throws if it failed or is not done by then (after killing it).
    void wait(double timeout_s);
    void kill_now();
    // Closes the pipe to the child (a role that watches it returns), gives it `grace_s` to
    // exit, then kills it. A role that exits writes its profile when run under callgrind.
    void stop(double grace_s);
    pid_t pid() const { return pid_; }
    const std::string& name() const { return name_; }

private:
    friend Child fork_role(const std::string& name, const std::function<void(RoleIo&)>& body);
    std::string name_;
    pid_t pid_ = -1;
    int from_ = -1, to_ = -1;
    std::string buffer_;
};

// Forks a process that runs `body` and exits 0, or reports {"error": what} and exits 1 if it
// throws. The child keeps only stdio and its two pipes.
Child fork_role(const std::string& name, const std::function<void(RoleIo&)>& body);

// --- servers --------------------------------------------------------------------------------

// A program started in a process group of its own, output to `log`, stopped (the whole group)
// by stop() or the destructor.
class Server {
public:
    Server() = default;
    Server(Server&&) noexcept;
    Server& operator=(Server&&) noexcept;
    ~Server();
    static Server spawn(const std::vector<std::string>& argv, const std::string& log);
    // Forks `body` as a server (a zmq_proxy).
    static Server fork(const std::string& log, const std::function<void()>& body);
    pid_t pid() const { return pid_; }
    bool running() const; // the leader has not exited
    std::string log_tail() const;
    void stop();

private:
    pid_t pid_ = -1;
    std::string log_;
};

// --- helpers --------------------------------------------------------------------------------

// Waits until something accepts connections on the unix socket `path` (or 127.0.0.1:`port`).
void wait_for_unix(const std::string& path, double timeout_s, const Server* server = nullptr);
void wait_for_tcp(int port, double timeout_s, const Server* server = nullptr);

struct Memory {
    double rss_mb = 0; // VmRSS
    double hwm_mb = 0; // VmHWM: the peak since the process started
};
Memory memory_of(pid_t pid);
// The pids of `pid`'s children.
std::vector<pid_t> children_of(pid_t pid);

void write_file(const std::string& path, const std::string& text);
void remove_tree(const std::string& path);
std::string make_temp_dir(const std::string& prefix);

// The voluntary context switches of the calling thread so far: it slept in the kernel (a
// blocking call), as opposed to being preempted.
long voluntary_switches();

// Times a publisher's single send calls (the stall case). A call that took long may have been
// blocked by its transport (the thread slept: a voluntary context switch) or only preempted on a
// busy machine (2 cores, several processes): `max_blocked_ms` counts only the former.
class SendTimer {
public:
    // Before a run of sends with no other work between them.
    void begin() { switches_ = voluntary_switches(); }
    template <class Send>
    auto time(Send&& send) {
        const double t0 = now_s();
        auto result = send();
        const double ms = (now_s() - t0) * 1000;
        max_call_ms = std::max(max_call_ms, ms);
        if (ms > 0.2) {
            // Whether the thread slept since begin(): at worst a short sleep in an earlier call
            // of the run is blamed on this one.
            if (const long now = voluntary_switches(); now != switches_) {
                max_blocked_ms = std::max(max_blocked_ms, ms);
                switches_ = now;
            }
        }
        return result;
    }
    double max_call_ms = 0;    // wall time, preemption included
    double max_blocked_ms = 0; // calls that slept

private:
    long switches_ = 0;
};

// Paces a publisher at `rate` msgs/s (0: no pacing): how many messages it may send now, at most
// `chunk`.
class Pacer {
public:
    explicit Pacer(double rate) : rate_(rate) {}
    void start(double now) { start_ = now; }
    std::uint64_t allowance(double now, std::uint64_t sent, std::uint64_t chunk) const;
    bool paced() const { return rate_ > 0; }

private:
    double rate_;
    double start_ = 0;
};

} // namespace bench::broker
