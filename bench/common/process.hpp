// The processes and descriptors of a benchmark: forking a peer that dies with the bench and may
// be pinned to a CPU, waiting for it, blocking I/O that survives signals, errors from the OS as
// exceptions, and finding a free port or what was built beside the bench.
#pragma once

#include <cerrno>
#include <csignal>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <sys/types.h>
#include <unistd.h>

namespace bench {

// std::system_error from errno, saying `what` failed. Cold: the timed loops that check a call
// with it keep their error path out of the way, as when each benchmark had its own.
[[noreturn, gnu::cold]] void throw_errno(const std::string& what);

// Writes all of `data` to a blocking descriptor, retried on EINTR; throws on errors. Inline, as
// each benchmark's own copy was: raw peers call it inside their timed loops.
inline void write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        const ssize_t n = ::write(fd, data.data(), data.size());
        if (n < 0) {
            if (errno == EINTR)
                continue;
            throw_errno("write");
        }
        data.remove_prefix(static_cast<std::size_t>(n));
    }
}

// Reads exactly `size` bytes, retried on EINTR; throws on errors and at the end of the stream.
void read_exact(int fd, char* data, std::size_t size);

// Runs the calling thread on `cpu` (modulo the CPUs online) alone. Nothing on a one-CPU
// machine, where two pinned processes would only take turns.
void pin_to_cpu(int cpu) noexcept;

struct ForkOptions {
    // Sent to the child when the bench ends (PR_SET_PDEATHSIG), however it ends: a benchmark
    // that fails, times out or is killed leaves no peer behind. 0: the child outlives the bench
    // (broker-bench's janitor, which cleans up after it).
    int death_signal = SIGKILL;
    // The CPU the child runs on (pin_to_cpu); -1: where the scheduler puts it.
    int cpu = -1;
};

// fork() as a benchmark wants it: output buffered so far is flushed first (or the child would
// print it a second time), and the child is set up as `options` say before it returns 0 there.
// Returns the child's pid in the bench; throws if there is no child.
pid_t fork_process(const ForkOptions& options = {});

// Forks a child that runs `body` and exits with what it returns; with 1 if it throws, after
// printing "NAME: what" to stderr. It never returns in the child.
pid_t fork_child(const std::string& name, const std::function<int()>& body,
                 const ForkOptions& options = {});

// A peer connected to the bench by a socketpair (AF_UNIX, SOCK_STREAM).
struct SocketPeer {
    pid_t pid;
    int socket; // the bench's end; the bench closes it
};

// fork_child, with a socketpair between the two: `body` gets the child's end, and each process
// closes the end it does not use, so either sees the other go as the end of the stream.
SocketPeer fork_socket_peer(const std::string& name, const std::function<int(int socket)>& body,
                            const ForkOptions& options = {});

// Waits for the child `pid` to end, through signals that interrupt the wait; true if it
// exited with 0.
bool wait_child(pid_t pid) noexcept;

// A TCP port on 127.0.0.1 that nothing listens on now.
int free_tcp_port();

// Runs `argv` (found on PATH) with its stdout read here, waits for it, and returns its output
// without the trailing newlines; `exited_0` says whether it exited with 0. The peers written in
// other languages (bench/node) print their result as the last line.
std::string run_for_output(const std::vector<std::string>& argv, bool& exited_0);

// The directory of the running program: a benchmark runs the programs built beside it.
std::string program_dir();

} // namespace bench
