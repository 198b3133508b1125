#include "bus/child_process.hpp"

#include <boost/asio/post.hpp>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <string_view>

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

// glibc 2.36's <sys/pidfd.h> lacks the C++ linkage guards.
extern "C" {
#include <sys/pidfd.h>
}

extern char** environ;

namespace bus {

namespace asio = boost::asio;

namespace {

std::string_view env_name(std::string_view entry) {
    return entry.substr(0, entry.find('='));
}

// The child's environment: ours, minus any channel inherited from our own parent, with the
// caller's entries and the channel variables on top.
std::vector<std::string> child_environment(const SpawnOptions& options) {
    std::vector<std::string> added = options.env;
    const std::string fd = std::to_string(options.channel_fd);
    if (options.channel.serialization == Serialization::node_json) {
        added.push_back("NODE_CHANNEL_FD=" + fd);
        added.push_back("NODE_CHANNEL_SERIALIZATION_MODE=json");
    } else {
        added.push_back("BUS_CHANNEL_FD=" + fd);
    }
    auto replaced = [&](std::string_view name) {
        if (name == "BUS_CHANNEL_FD" || name == "NODE_CHANNEL_FD" ||
            name == "NODE_CHANNEL_SERIALIZATION_MODE")
            return true;
        for (const auto& entry : added)
            if (env_name(entry) == name)
                return true;
        return false;
    };
    std::vector<std::string> env;
    for (char** e = environ; e && *e; ++e)
        if (!replaced(env_name(*e)))
            env.emplace_back(*e);
    env.insert(env.end(), added.begin(), added.end());
    return env;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
    std::vector<char*> out;
    out.reserve(strings.size() + 1);
    for (auto& s : strings)
        out.push_back(s.data());
    out.push_back(nullptr);
    return out;
}

// One descriptor the child gets: `from` here becomes `to` there.
struct FdMapping {
    int from;
    int to;
};

// Runs in the child between fork() and exec(): async-signal-safe calls only.
[[noreturn]] void exec_child(FdMapping* fds, std::size_t count, int report, const char* cwd,
                             char** argv, char** envp, int death_signal, pid_t parent) {
    // Every source out of the way of every target first (one may sit on another's target),
    // then dup2, which also clears close-on-exec on the copy.
    int above = 2;
    for (std::size_t i = 0; i < count; ++i)
        above = std::max(above, fds[i].to);
    ++above;
    if (report < above)
        report = ::fcntl(report, F_DUPFD_CLOEXEC, above);
    for (std::size_t i = 0; i < count; ++i)
        if (fds[i].from < above && (fds[i].from = ::fcntl(fds[i].from, F_DUPFD_CLOEXEC, above)) < 0)
            goto failed;
    for (std::size_t i = 0; i < count; ++i)
        if (::dup2(fds[i].from, fds[i].to) < 0)
            goto failed;
    if (cwd && ::chdir(cwd) < 0)
        goto failed;
    {
        // Start the program as a shell would: default signal dispositions, nothing blocked.
        struct sigaction dfl {};
        dfl.sa_handler = SIG_DFL;
        for (int s = 1; s < NSIG; ++s)
            ::sigaction(s, &dfl, nullptr);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
    }
    if (death_signal > 0) {
        if (::prctl(PR_SET_PDEATHSIG, death_signal) < 0)
            goto failed;
        if (::getppid() != parent) // died before the prctl: nobody will send it
            ::raise(death_signal);
    }
    ::execvpe(argv[0], argv, envp);
failed:
    const int err = errno;
    (void)!::write(report, &err, sizeof err);
    ::_exit(127);
}

} // namespace

ChildProcess::ChildProcess(asio::io_context& io, pid_t pid, int pidfd)
    : pid_(pid), pidfd_(io, pidfd) {}

ChildProcess::~ChildProcess() {
    if (running_) {
        ::pidfd_send_signal(pidfd_.native_handle(), SIGKILL, nullptr, 0);
        reap(true);
    }
}

std::error_code ChildProcess::kill(int signal) noexcept {
    if (!running_)
        return std::make_error_code(std::errc::no_such_process);
    if (::pidfd_send_signal(pidfd_.native_handle(), signal, nullptr, 0) < 0)
        return last_error();
    return {};
}

void ChildProcess::on_exit(ExitHandler handler) {
    if (running_) {
        on_exit_ = std::move(handler);
        return;
    }
    asio::post(pidfd_.get_executor(), [handler = std::move(handler), code = exit_code_,
                                       sig = term_signal_] { handler(code, sig); });
}

bool ChildProcess::reap(bool block) noexcept {
    const int fd = pidfd_.native_handle();
    if (block) {
        // Asio may have made the pidfd non-blocking, and waitid() on a non-blocking pidfd
        // never waits (EAGAIN): wait for it to become readable (the process exited) first.
        pollfd exited{fd, POLLIN, 0};
        while (::poll(&exited, 1, -1) < 0 && errno == EINTR) {
        }
    }
    siginfo_t info{};
    int r;
    do {
        r = ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(fd), &info,
                     WEXITED | WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r < 0 && errno == EAGAIN)
        return false;
    if (r < 0) {
        // ECHILD: somebody else reaped it (SIGCHLD ignored, or a waitpid(-1) elsewhere).
        running_ = false;
        return true;
    }
    if (info.si_pid == 0)
        return false; // still running
    running_ = false;
    if (info.si_code == CLD_EXITED) {
        exit_code_ = info.si_status;
    } else {
        exit_code_ = -1;
        term_signal_ = info.si_status;
    }
    return true;
}

void ChildProcess::watch() {
    // A pidfd becomes readable when the process exits.
    pidfd_.async_wait(asio::posix::stream_descriptor::wait_read,
                      [weak = weak_from_this()](boost::system::error_code ec) {
                          auto self = weak.lock();
                          if (!self || ec)
                              return;
                          if (!self->reap(false))
                              return self->watch();
                          if (auto handler = std::move(self->on_exit_))
                              handler(self->exit_code_, self->term_signal_);
                      });
}

Result<std::shared_ptr<ChildProcess>>
spawn(asio::io_context& io, const std::vector<std::string>& argv, SpawnOptions options) {
    if (argv.empty() || options.channel_fd < 0)
        return std::make_error_code(std::errc::invalid_argument);
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return last_error();
    UniqueFd ours(sv[0]), theirs(sv[1]);
    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) < 0)
        return last_error();
    UniqueFd report_read(pipe_fds[0]), report_write(pipe_fds[1]);

    std::vector<std::string> args = argv;
    auto env = child_environment(options);
    auto c_args = c_strings(args);
    auto c_env = c_strings(env);
    const char* cwd = options.cwd.empty() ? nullptr : options.cwd.c_str();
    std::vector<FdMapping> fds{{theirs.get(), options.channel_fd}};
    if (options.stdout_fd >= 0)
        fds.push_back({options.stdout_fd, 1});
    if (options.stderr_fd >= 0)
        fds.push_back({options.stderr_fd, 2});
    for (const auto& [fd, number] : options.inherit)
        fds.push_back({fd, number});

    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0)
        return last_error();
    if (pid == 0)
        exec_child(fds.data(), fds.size(), report_write.get(), cwd, c_args.data(), c_env.data(),
                   options.parent_death_signal, parent);
    theirs.reset();
    report_write.reset();

    // The report pipe closes on a successful exec; an errno arrives if it failed.
    int child_errno = 0;
    ssize_t n;
    do {
        n = ::read(report_read.get(), &child_errno, sizeof child_errno);
    } while (n < 0 && errno == EINTR);
    if (n == sizeof child_errno) {
        ::waitpid(pid, nullptr, 0);
        return std::error_code(child_errno, std::system_category());
    }

    // Not reaped yet, so the pid cannot have been reused.
    const int pidfd = ::pidfd_open(pid, 0);
    if (pidfd < 0) {
        const auto ec = last_error();
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        return ec;
    }
    std::shared_ptr<ChildProcess> child(new ChildProcess(io, pid, pidfd));
    auto channel = Channel::adopt(io, std::move(ours), options.channel);
    if (!channel)
        return channel.error(); // the destructor kills and reaps the child
    child->channel_ = std::move(channel).value();
    child->watch();
    return child;
}

} // namespace bus
