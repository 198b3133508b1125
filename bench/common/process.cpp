// Forking, pinning, waiting and the OS helpers of process.hpp.
#include "process.hpp"

#include <cstdio>
#include <exception>
#include <filesystem>
#include <stdexcept>
#include <system_error>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

extern char** environ;

namespace bench {

void throw_errno(const std::string& what) {
    throw std::system_error(errno, std::system_category(), what);
}

void read_exact(int fd, char* data, std::size_t size) {
    while (size > 0) {
        const ssize_t n = ::read(fd, data, size);
        if (n == 0)
            throw std::runtime_error("the peer closed the connection");
        if (n < 0) {
            if (errno == EINTR)
                continue;
            throw_errno("read");
        }
        data += n;
        size -= static_cast<std::size_t>(n);
    }
}

void pin_to_cpu(int cpu) noexcept {
    const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus < 2)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu % cpus, &set);
    ::sched_setaffinity(0, sizeof set, &set);
}

pid_t fork_process(const ForkOptions& options) {
    std::fflush(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0)
        throw_errno("fork");
    if (pid == 0) {
        if (options.death_signal) {
            ::prctl(PR_SET_PDEATHSIG, options.death_signal);
            // The bench may have died before the line above: then no signal would come.
            if (::getppid() != parent)
                ::_exit(1);
        }
        if (options.cpu >= 0)
            pin_to_cpu(options.cpu);
    }
    return pid;
}

pid_t fork_child(const std::string& name, const std::function<int()>& body,
                 const ForkOptions& options) {
    const pid_t pid = fork_process(options);
    if (pid == 0) {
        int status = 1;
        try {
            status = body();
        } catch (const std::exception& e) {
            std::fprintf(stderr, "%s: %s\n", name.c_str(), e.what());
        } catch (...) {
            // Not past here: the child would go on running the bench's code.
            std::fprintf(stderr, "%s: an exception that is not a std::exception\n", name.c_str());
        }
        std::fflush(nullptr);
        ::_exit(status);
    }
    return pid;
}

SocketPeer fork_socket_peer(const std::string& name, const std::function<int(int socket)>& body,
                            const ForkOptions& options) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        throw_errno("socketpair");
    pid_t pid = -1;
    try {
        pid = fork_child(
            name,
            [&] {
                ::close(sv[0]);
                return body(sv[1]);
            },
            options);
    } catch (...) {
        ::close(sv[0]);
        ::close(sv[1]);
        throw;
    }
    ::close(sv[1]);
    return {pid, sv[0]};
}

bool wait_child(pid_t pid) noexcept {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return false;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int free_tcp_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) < 0)
        throw_errno("free port");
    ::close(fd);
    return ntohs(addr.sin_port);
}

std::string program_dir() {
    return std::filesystem::canonical("/proc/self/exe").parent_path().string();
}

std::string run_for_output(const std::vector<std::string>& argv_strings, bool& exited_0) {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) < 0)
        throw_errno("pipe2");
    std::vector<char*> argv;
    for (const auto& s : argv_strings)
        argv.push_back(const_cast<char*>(s.c_str()));
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    pid_t pid = 0;
    const int err = ::posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    if (err != 0) {
        ::close(out[0]);
        throw std::system_error(err, std::system_category(), "cannot start " + argv_strings[0]);
    }
    std::string output;
    char buf[4096];
    for (;;) {
        const ssize_t n = ::read(out[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        output.append(buf, static_cast<std::size_t>(n));
    }
    ::close(out[0]);
    exited_0 = wait_child(pid);
    while (!output.empty() && output.back() == '\n')
        output.pop_back();
    return output;
}

} // namespace bench
