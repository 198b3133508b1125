#include "harness.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>

#include <arpa/inet.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

namespace bench::broker {

double now_s() {
    return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

namespace {

void sleep_s(double s) {
    std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

// Closes every descriptor but stdio and `keep` (which end up as 1000, 1001, ...).
std::vector<int> keep_only(std::vector<int> keep) {
    std::vector<int> moved;
    for (std::size_t i = 0; i < keep.size(); ++i) {
        const int target = 1000 + static_cast<int>(i);
        if (keep[i] != target && ::dup2(keep[i], target) < 0)
            ::_exit(126);
        moved.push_back(target);
    }
    ::close_range(3, 999, 0);
    ::close_range(1000 + static_cast<unsigned>(keep.size()), UINT_MAX, 0);
    return moved;
}

} // namespace

// --- the janitor ----------------------------------------------------------------------------

namespace janitor {
namespace {

int command_fd = -1; // the bench's end
int reply_fd = -1;
pid_t janitor_pid = -1;

void command(const std::string& line) {
    if (command_fd >= 0)
        write_all(command_fd, line + "\n");
}

struct Journal {
    int fd = -1;
    std::vector<std::string> created_dirs; // innermost last
    std::string socket_path;
};

std::string create_journal(Journal& journal) {
    const std::string dir = "/run/systemd/journal";
    const std::string path = dir + "/socket";
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0)
        return "exists";
    for (const std::string& d : {std::string("/run/systemd"), dir}) {
        if (::mkdir(d.c_str(), 0755) == 0)
            journal.created_dirs.push_back(d);
        else if (errno != EEXIST)
            return std::string("err mkdir ") + d + ": " + std::strerror(errno);
    }
    const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    path.copy(addr.sun_path, sizeof addr.sun_path - 1);
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0)
        return std::string("err bind ") + path + ": " + std::strerror(errno);
    ::chmod(path.c_str(), 0666);
    journal.fd = fd;
    journal.socket_path = path;
    return "created";
}

[[noreturn]] void run(int commands, int replies) {
    // Ctrl-C reaches the whole foreground group; the janitor must outlive the bench.
    std::signal(SIGINT, SIG_IGN);
    std::signal(SIGTERM, SIG_IGN);
    std::signal(SIGHUP, SIG_IGN);
    std::signal(SIGPIPE, SIG_IGN);
    std::vector<pid_t> groups;
    std::vector<std::string> paths;
    Journal journal;
    std::string buffer;
    for (;;) {
        pollfd fds[2] = {{commands, POLLIN, 0}, {journal.fd, POLLIN, 0}};
        if (::poll(fds, journal.fd >= 0 ? 2 : 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (journal.fd >= 0 && (fds[1].revents & POLLIN)) {
            char sink[65536];
            while (::recv(journal.fd, sink, sizeof sink, 0) > 0) {
            }
        }
        if (!fds[0].revents)
            continue;
        char chunk[4096];
        const ssize_t n = ::read(commands, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; // the bench is gone, or done
        buffer.append(chunk, static_cast<std::size_t>(n));
        std::size_t eol;
        while ((eol = buffer.find('\n')) != std::string::npos) {
            const std::string line = buffer.substr(0, eol);
            buffer.erase(0, eol + 1);
            const std::string arg = line.size() > 3 ? line.substr(3) : std::string();
            if (line.starts_with("G+ "))
                groups.push_back(std::atoi(arg.c_str()));
            else if (line.starts_with("G- "))
                std::erase(groups, std::atoi(arg.c_str()));
            else if (line.starts_with("P+ "))
                paths.push_back(arg);
            else if (line.starts_with("P- "))
                std::erase(paths, arg);
            else if (line == "J") {
                const std::string reply = create_journal(journal) + "\n";
                (void)!::write(replies, reply.data(), reply.size());
            }
        }
    }
    for (pid_t g : groups)
        ::kill(-g, SIGTERM);
    const double deadline = now_s() + 1.0;
    while (!groups.empty() && now_s() < deadline) {
        std::erase_if(groups, [](pid_t g) { return ::kill(-g, 0) < 0 && errno == ESRCH; });
        sleep_s(0.01);
    }
    for (pid_t g : groups)
        ::kill(-g, SIGKILL);
    for (auto it = paths.rbegin(); it != paths.rend(); ++it)
        remove_tree(*it);
    if (journal.fd >= 0) {
        ::close(journal.fd);
        ::unlink(journal.socket_path.c_str());
    }
    for (auto it = journal.created_dirs.rbegin(); it != journal.created_dirs.rend(); ++it)
        ::rmdir(it->c_str());
    ::_exit(0);
}

} // namespace

void start() {
    int commands[2], replies[2];
    if (::pipe2(commands, O_CLOEXEC) < 0 || ::pipe2(replies, O_CLOEXEC) < 0)
        throw_errno("pipe2");
    // No death signal: the janitor's work starts when the bench is gone.
    const pid_t pid = fork_process({.death_signal = 0});
    if (pid == 0) {
        const auto fds = keep_only({commands[0], replies[1]});
        run(fds[0], fds[1]);
    }
    ::close(commands[0]);
    ::close(replies[1]);
    command_fd = commands[1];
    reply_fd = replies[0];
    janitor_pid = pid;
}

void track_group(pid_t pgid) {
    command("G+ " + std::to_string(pgid));
}
void untrack_group(pid_t pgid) {
    command("G- " + std::to_string(pgid));
}
void track_path(const std::string& path) {
    command("P+ " + path);
}
void untrack_path(const std::string& path) {
    command("P- " + path);
}

void ensure_journal_socket() {
    static bool done = false;
    if (done)
        return;
    command("J");
    std::string reply;
    char c;
    while (::read(reply_fd, &c, 1) == 1 && c != '\n')
        reply += c;
    if (reply.starts_with("err") || reply.empty())
        throw std::runtime_error("journal socket: " + reply);
    if (reply == "created")
        std::fprintf(stderr, "broker-bench: created /run/systemd/journal/socket for "
                             "dbus-broker-launch (removed at the end)\n");
    done = true;
}

void stop() {
    if (command_fd < 0)
        return;
    ::close(command_fd);
    command_fd = -1;
    wait_child(janitor_pid);
    ::close(reply_fd);
}

} // namespace janitor

// --- roles ----------------------------------------------------------------------------------

void RoleIo::ready() {
    write_all(out_, "{\"ready\":true}\n");
}

void RoleIo::result(const nlohmann::json& value) {
    write_all(out_, value.dump() + "\n");
}

bool RoleIo::read_control(const std::function<void(const std::string&)>& on_line) {
    bool open = true;
    char chunk[512];
    for (;;) {
        const ssize_t n = ::read(in_, chunk, sizeof chunk);
        if (n > 0) {
            buffer_.append(chunk, static_cast<std::size_t>(n));
            continue;
        }
        if (n == 0)
            open = false;
        else if (errno == EINTR)
            continue;
        break; // EAGAIN
    }
    std::size_t eol;
    while ((eol = buffer_.find('\n')) != std::string::npos) {
        const std::string line = buffer_.substr(0, eol);
        buffer_.erase(0, eol + 1);
        on_line(line);
    }
    return open;
}

std::string RoleIo::wait_control() {
    for (;;) {
        std::string line;
        const bool open = read_control([&](const std::string& l) {
            if (line.empty())
                line = l;
        });
        if (!line.empty() || !open)
            return line;
        pollfd p{in_, POLLIN, 0};
        ::poll(&p, 1, -1);
    }
}

Child::Child(Child&& o) noexcept {
    *this = std::move(o);
}

Child& Child::operator=(Child&& o) noexcept {
    std::swap(name_, o.name_);
    std::swap(pid_, o.pid_);
    std::swap(from_, o.from_);
    std::swap(to_, o.to_);
    std::swap(buffer_, o.buffer_);
    return *this;
}

Child::~Child() {
    kill_now();
    if (from_ >= 0)
        ::close(from_);
    if (to_ >= 0)
        ::close(to_);
}

void Child::kill_now() {
    if (pid_ <= 0)
        return;
    ::kill(pid_, SIGKILL);
    wait_child(pid_);
    pid_ = -1;
}

nlohmann::json Child::read(double timeout_s) {
    const double deadline = now_s() + timeout_s;
    for (;;) {
        if (const auto eol = buffer_.find('\n'); eol != std::string::npos) {
            const std::string line = buffer_.substr(0, eol);
            buffer_.erase(0, eol + 1);
            auto value = nlohmann::json::parse(line, nullptr, false);
            if (!value.is_object())
                throw std::runtime_error(name_ + ": unreadable output: " + line);
            if (value.contains("error"))
                throw std::runtime_error(name_ + ": " + value["error"].get<std::string>());
            return value;
        }
        const double left = deadline - now_s();
        if (left <= 0)
            throw std::runtime_error(name_ + ": no answer within " +
                                     std::to_string(static_cast<int>(timeout_s)) + " s");
        pollfd p{from_, POLLIN, 0};
        const int r = ::poll(&p, 1, static_cast<int>(std::ceil(left * 1000)));
        if (r < 0 && errno != EINTR)
            throw_errno("poll");
        if (r <= 0)
            continue;
        char chunk[4096];
        const ssize_t n = ::read(from_, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int status = 0;
            std::string how = "exited";
            if (::waitpid(pid_, &status, 0) == pid_) {
                pid_ = -1;
                if (WIFSIGNALED(status))
                    how = std::string("was killed by ") + strsignal(WTERMSIG(status));
                else
                    how = "exited with " + std::to_string(WEXITSTATUS(status));
            }
            throw std::runtime_error(name_ + ": " + how + " without an answer");
        }
        buffer_.append(chunk, static_cast<std::size_t>(n));
    }
}

void Child::send(const std::string& line) {
    if (to_ < 0)
        return;
    try {
        write_all(to_, line + "\n");
    } catch (const std::system_error& e) {
        // A child that already exited: read() tells why.
        if (e.code() != std::errc::broken_pipe)
            throw;
    }
}

void Child::wait(double timeout_s) {
    if (pid_ <= 0)
        return;
    const double deadline = now_s() + timeout_s;
    int status = 0;
    for (;;) {
        const pid_t r = ::waitpid(pid_, &status, WNOHANG);
        if (r == pid_)
            break;
        if (r < 0 && errno != EINTR)
            throw_errno("waitpid");
        if (now_s() > deadline) {
            kill_now();
            throw std::runtime_error(name_ + ": did not exit");
        }
        sleep_s(0.002);
    }
    pid_ = -1;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        throw std::runtime_error(name_ + ": failed");
}

void Child::stop(double grace_s) {
    if (to_ >= 0) {
        ::close(to_);
        to_ = -1;
    }
    for (const double deadline = now_s() + grace_s; pid_ > 0 && now_s() < deadline;
         sleep_s(0.002)) {
        int status;
        if (::waitpid(pid_, &status, WNOHANG) == pid_)
            pid_ = -1;
    }
    kill_now();
}

Child fork_role(const std::string& name, const std::function<void(RoleIo&)>& body) {
    int out[2], in[2];
    if (::pipe2(out, O_CLOEXEC) < 0 || ::pipe2(in, O_CLOEXEC) < 0)
        throw_errno("pipe2");
    const pid_t pid = fork_child(name, [&] {
        std::signal(SIGPIPE, SIG_IGN);
        const auto fds = keep_only({out[1], in[0]});
        ::fcntl(fds[1], F_SETFL, ::fcntl(fds[1], F_GETFL) | O_NONBLOCK);
        RoleIo io(fds[0], fds[1]);
        try {
            body(io);
            return 0;
        } catch (const std::exception& e) {
            // To the bench, which reads it as the role's result and names the role.
            try {
                io.result({{"error", e.what()}});
            } catch (...) {
            }
            return 1;
        }
    });
    ::close(out[1]);
    ::close(in[0]);
    Child child;
    child.name_ = name;
    child.pid_ = pid;
    child.from_ = out[0];
    child.to_ = in[1];
    return child;
}

// --- servers --------------------------------------------------------------------------------

Server::Server(Server&& o) noexcept {
    *this = std::move(o);
}

Server& Server::operator=(Server&& o) noexcept {
    std::swap(pid_, o.pid_);
    std::swap(log_, o.log_);
    return *this;
}

Server::~Server() {
    try {
        stop();
    } catch (...) {
    }
}

namespace {

pid_t start_group(const std::string& log, const std::function<void()>& in_child) {
    const int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log_fd < 0)
        throw_errno("open " + log);
    // SIGTERM when the bench dies: a server may clean up (the janitor kills its group anyway).
    const pid_t pid = fork_process({.death_signal = SIGTERM});
    if (pid == 0) {
        ::setpgid(0, 0);
        const int null = ::open("/dev/null", O_RDONLY);
        ::dup2(null, 0);
        ::dup2(log_fd, 1);
        ::dup2(log_fd, 2);
        ::close_range(3, UINT_MAX, 0);
        std::signal(SIGPIPE, SIG_DFL);
        in_child();
        ::_exit(127);
    }
    ::setpgid(pid, pid); // (the child did it too: whichever runs first)
    ::close(log_fd);
    janitor::track_group(pid);
    return pid;
}

} // namespace

Server Server::spawn(const std::vector<std::string>& argv, const std::string& log) {
    Server s;
    s.log_ = log;
    s.pid_ = start_group(log, [&] {
        std::vector<char*> args;
        for (const auto& a : argv)
            args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        ::execvp(args[0], args.data());
        std::fprintf(stderr, "cannot run %s: %s\n", args[0], std::strerror(errno));
    });
    return s;
}

Server Server::fork(const std::string& log, const std::function<void()>& body) {
    Server s;
    s.log_ = log;
    s.pid_ = start_group(log, [&] {
        try {
            body();
            ::_exit(0);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "%s\n", e.what());
        }
    });
    return s;
}

bool Server::running() const {
    if (pid_ <= 0)
        return false;
    std::ifstream stat("/proc/" + std::to_string(pid_) + "/stat");
    std::string line;
    if (!std::getline(stat, line))
        return false;
    const auto close = line.rfind(')');
    return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

std::string Server::log_tail() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    if (text.size() > 600)
        text = "..." + text.substr(text.size() - 600);
    return text;
}

void Server::stop() {
    if (pid_ <= 0)
        return;
    const pid_t group = pid_;
    pid_ = -1;
    auto reap_group = [&] {
        int status;
        while (::waitpid(-group, &status, WNOHANG) > 0) {
        }
    };
    ::kill(-group, SIGTERM);
    bool gone = false;
    for (double deadline = now_s() + 3; !gone && now_s() < deadline; sleep_s(0.002)) {
        reap_group();
        gone = ::kill(-group, 0) < 0 && errno == ESRCH;
    }
    if (!gone) {
        ::kill(-group, SIGKILL);
        for (double deadline = now_s() + 2; !gone && now_s() < deadline; sleep_s(0.002)) {
            reap_group();
            gone = ::kill(-group, 0) < 0 && errno == ESRCH;
        }
    }
    janitor::untrack_group(group);
    if (!gone)
        throw std::runtime_error("process group " + std::to_string(group) + " would not stop");
}

// --- helpers --------------------------------------------------------------------------------

namespace {

template <class Connect>
void wait_until(const std::string& what, double timeout_s, const Server* server, Connect connect) {
    const double deadline = now_s() + timeout_s;
    for (;;) {
        if (connect())
            return;
        if (server && !server->running())
            throw std::runtime_error(what + ": the server exited: " + server->log_tail());
        if (now_s() > deadline)
            throw std::runtime_error(what + ": nobody listens after " +
                                     std::to_string(static_cast<int>(timeout_s)) + " s" +
                                     (server ? ": " + server->log_tail() : std::string()));
        sleep_s(0.003);
    }
}

} // namespace

void wait_for_unix(const std::string& path, double timeout_s, const Server* server) {
    wait_until(path, timeout_s, server, [&] {
        const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        path.copy(addr.sun_path, sizeof addr.sun_path - 1);
        const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
        ::close(fd);
        return ok;
    });
}

void wait_for_tcp(int port, double timeout_s, const Server* server) {
    wait_until("127.0.0.1:" + std::to_string(port), timeout_s, server, [&] {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(static_cast<std::uint16_t>(port));
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
        ::close(fd);
        return ok;
    });
}

Memory memory_of(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    Memory m;
    while (std::getline(in, line)) {
        auto value = [&] { return std::strtod(line.c_str() + 6, nullptr) / 1024.0; };
        if (line.starts_with("VmRSS:"))
            m.rss_mb = value();
        else if (line.starts_with("VmHWM:"))
            m.hwm_mb = value();
    }
    return m;
}

std::vector<pid_t> children_of(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
    std::vector<pid_t> out;
    pid_t child;
    while (in >> child)
        out.push_back(child);
    return out;
}

void write_file(const std::string& path, const std::string& text) {
    std::ofstream out(path);
    out << text;
    if (!out)
        throw std::runtime_error("cannot write " + path);
}

void remove_tree(const std::string& path) {
    ::nftw(
        path.c_str(), [](const char* p, const struct stat*, int, FTW*) { return ::remove(p); }, 16,
        FTW_DEPTH | FTW_PHYS);
}

std::string make_temp_dir(const std::string& prefix) {
    std::string templ = "/tmp/" + prefix + ".XXXXXX";
    if (!::mkdtemp(templ.data()))
        throw_errno("mkdtemp");
    return templ;
}

long voluntary_switches() {
    rusage usage{};
    ::getrusage(RUSAGE_THREAD, &usage);
    return usage.ru_nvcsw;
}

std::uint64_t Pacer::allowance(double now, std::uint64_t sent, std::uint64_t chunk) const {
    if (rate_ <= 0)
        return chunk;
    const double due = (now - start_) * rate_;
    if (due <= static_cast<double>(sent))
        return 0;
    return std::min<std::uint64_t>(chunk, static_cast<std::uint64_t>(due) - sent + 1);
}

} // namespace bench::broker
