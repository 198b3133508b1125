// Clients under other uids, for the access-rule tests: busd tells clients apart by the uid the
// kernel gives it for each connection (SO_PEERCRED), so such a client must really run as that
// uid.
//
// As root: AsUser forks a child that drops to the uid (setresgid/setresuid, no supplementary
// groups) before it does anything else.
//
// Not as root, a user namespace of our own is not enough: every process in it still has our
// uid outside it, and that is the uid busd sees (the kernel translates credentials, it does not
// invent them). Other uids take ids the system has delegated to us: newuidmap and newgidmap
// (Debian: uidmap) map our subordinate ids (/etc/subuid, /etc/subgid) into a namespace where we
// are root. rerun_in_user_namespace() runs the current test again there, where it takes the
// root path: busd and the clients all inside, busd seeing the uids of the namespace. Without
// those, the test can only be skipped, and says why.
#pragma once

#include "temp_dir.hpp"
#include "test_support.hpp"

#include <bus/unique_fd.hpp>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace bus::test {

inline constexpr uid_t nobody = 65534;

// A child forked from this process that drops to `uid`:`gid` (real, effective and saved ids,
// no supplementary groups) and exits with what `body` returns, or 125 if it could not drop.
// Destroying it kills the child if it still runs.
class AsUser {
public:
    AsUser(uid_t uid, gid_t gid, const std::function<int()>& body) : pid_(::fork()) {
        EXPECT_GE(pid_, 0) << "fork: " << std::strerror(errno);
        if (pid_ != 0)
            return;
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::setgroups(0, nullptr) != 0 || ::setresgid(gid, gid, gid) != 0 ||
            ::setresuid(uid, uid, uid) != 0 || ::getuid() != uid || ::getgid() != gid) {
            std::fprintf(stderr, "cannot drop to uid %u, gid %u: %s\n", uid, gid,
                         std::strerror(errno));
            ::_exit(125);
        }
        ::_exit(body());
    }
    ~AsUser() {
        if (pid_ > 0 && !status_) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
    }
    AsUser(const AsUser&) = delete;
    AsUser& operator=(const AsUser&) = delete;

    // Its exit code once it has ended (-1 if a signal ended it); nullopt if it still runs after
    // `timeout`.
    std::optional<int> wait(std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
        wait_until(
            [&] {
                int status = 0;
                if (!status_ && pid_ > 0 && ::waitpid(pid_, &status, WNOHANG) == pid_)
                    status_ = status;
                return status_.has_value();
            },
            timeout);
        if (!status_)
            return std::nullopt;
        return WIFEXITED(*status_) ? WEXITSTATUS(*status_) : -1;
    }

private:
    pid_t pid_;
    std::optional<int> status_;
};

// An AsUser body that runs a program: argv[0] is opened here, by the caller, so that the other
// uid need only be allowed to execute it, not to reach it by its path. stdin from /dev/null,
// stdout and stderr to `out` and `err`.
inline std::function<int()> run_program(std::vector<std::string> argv, int out, int err) {
    auto program = std::make_shared<UniqueFd>(::open(argv[0].c_str(), O_PATH | O_CLOEXEC));
    EXPECT_TRUE(*program) << argv[0] << ": " << std::strerror(errno);
    return [program, argv = std::move(argv), out, err] {
        const int in = ::open("/dev/null", O_RDONLY);
        if (in < 0 || ::dup2(in, 0) < 0 || ::dup2(out, 1) < 0 || ::dup2(err, 2) < 0)
            return 126;
        std::vector<char*> args;
        for (const auto& a : argv)
            args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        ::fexecve(program->get(), args.data(), environ);
        std::fprintf(stderr, "exec %s: %s\n", argv[0].c_str(), std::strerror(errno));
        return 127;
    };
}

namespace detail {

// The first range of subordinate ids of the user `id` in `file` (/etc/subuid, /etc/subgid): its
// first id and how many; nullopt if it has none.
inline std::optional<std::pair<unsigned long, unsigned long>> subordinate_ids(const char* file,
                                                                              uid_t uid) {
    const passwd* pw = ::getpwuid(uid);
    std::ifstream in(file);
    for (std::string line; std::getline(in, line);) {
        std::istringstream fields(line);
        std::string owner, start, count;
        if (std::getline(fields, owner, ':') && std::getline(fields, start, ':') &&
            std::getline(fields, count) &&
            (owner == std::to_string(uid) || (pw && owner == pw->pw_name)))
            return std::pair{std::stoul(start), std::stoul(count)};
    }
    return std::nullopt;
}

inline std::string find_program(const std::string& name) {
    std::string path = std::getenv("PATH") ? std::getenv("PATH") : "";
    path += ":/usr/bin:/bin:/usr/sbin:/sbin";
    std::istringstream dirs(path);
    for (std::string dir; std::getline(dirs, dir, ':');)
        if (!dir.empty() && ::access((dir + "/" + name).c_str(), X_OK) == 0)
            return dir + "/" + name;
    return {};
}

// Runs `argv` and waits for it; its exit status as text, empty if it exited 0.
inline std::string run(const std::vector<std::string>& argv) {
    const pid_t pid = ::fork();
    if (pid == 0) {
        std::vector<char*> args;
        for (const auto& a : argv)
            args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        ::execv(args[0], args.data());
        ::_exit(127);
    }
    int status = 0;
    if (pid < 0 || ::waitpid(pid, &status, 0) != pid)
        return "could not run it";
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return {};
    return WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status)) : "killed";
}

} // namespace detail

// The inner ids 1..65535 (65533, 65534 among them) come from our subordinate ranges.
inline constexpr unsigned long namespace_ids = 65535;

// Not root: runs the current test again (this executable, that test alone) in a user namespace
// where we are root and 1..65535 are subordinate ids of ours, and checks it passed there.
// Returns why it could not, for the caller to skip with; empty once it ran.
inline std::string rerun_in_user_namespace() {
    const uid_t uid = ::getuid();
    const gid_t gid = ::getgid();
    const std::string needs =
        "running clients as other uids needs root, or a user namespace with subordinate ids: ";
    const std::string newuidmap = detail::find_program("newuidmap");
    const std::string newgidmap = detail::find_program("newgidmap");
    if (newuidmap.empty() || newgidmap.empty())
        return needs + "no newuidmap/newgidmap here (Debian: apt install uidmap)";
    const auto uids = detail::subordinate_ids("/etc/subuid", uid);
    const auto gids = detail::subordinate_ids("/etc/subgid", gid);
    if (!uids || !gids || uids->second < namespace_ids || gids->second < namespace_ids)
        return needs + "uid " + std::to_string(uid) + " needs ranges of " +
               std::to_string(namespace_ids) + " ids in /etc/subuid and /etc/subgid " +
               "(usermod --add-subuids FIRST-LAST --add-subgids FIRST-LAST USER)";

    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    const std::string filter =
        std::string("--gtest_filter=") + test->test_suite_name() + "." + test->name();
    const TempDir dir;
    const std::string report = (dir / "report.json");
    const std::string self = std::filesystem::canonical("/proc/self/exe").string();

    // The child makes the namespace and waits for its ids; we map them (newuidmap acts on a
    // process that is not itself); then it runs the test as the namespace's root.
    int ready[2], go[2];
    if (::pipe2(ready, O_CLOEXEC) != 0 || ::pipe2(go, O_CLOEXEC) != 0)
        return needs + "pipe: " + std::strerror(errno);
    const pid_t child = ::fork();
    if (child == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        const int made = ::unshare(CLONE_NEWUSER) == 0 ? 0 : errno;
        (void)!::write(ready[1], &made, sizeof made);
        char mapped = 0;
        if (made != 0 || ::read(go[0], &mapped, 1) != 1 || mapped != 'y')
            ::_exit(120);
        // Our own supplementary groups are not mapped: gone, so nothing shows as nogroup.
        (void)::setgroups(0, nullptr);
        if (::setresgid(0, 0, 0) != 0 || ::setresuid(0, 0, 0) != 0)
            ::_exit(121);
        ::execl(self.c_str(), self.c_str(), filter.c_str(),
                ("--gtest_output=json:" + report).c_str(), static_cast<char*>(nullptr));
        ::_exit(122);
    }
    ::close(ready[1]);
    ::close(go[0]);
    UniqueFd ready_fd(ready[0]), go_fd(go[1]);
    if (child < 0)
        return needs + "fork: " + std::strerror(errno);
    auto end_child = [&] {
        ::kill(child, SIGKILL);
        ::waitpid(child, nullptr, 0);
    };
    int made = -1;
    if (::read(ready_fd.get(), &made, sizeof made) != sizeof made || made != 0) {
        end_child();
        return needs + "no user namespace: " +
               (made > 0 ? std::strerror(made) : std::string("the child did not say"));
    }
    const std::string pid = std::to_string(child);
    const std::string uid_error =
        detail::run({newuidmap, pid, "0", std::to_string(uid), "1", "1",
                     std::to_string(uids->first), std::to_string(namespace_ids)});
    const std::string gid_error =
        uid_error.empty()
            ? detail::run({newgidmap, pid, "0", std::to_string(gid), "1", "1",
                           std::to_string(gids->first), std::to_string(namespace_ids)})
            : std::string();
    if (!uid_error.empty() || !gid_error.empty()) {
        end_child();
        return needs + (uid_error.empty() ? "newgidmap: " + gid_error : "newuidmap: " + uid_error);
    }
    (void)!::write(go_fd.get(), "y", 1);
    std::optional<int> status;
    wait_until(
        [&] {
            int s = 0;
            if (::waitpid(child, &s, WNOHANG) == child)
                status = s;
            return status.has_value();
        },
        std::chrono::seconds(90));
    if (!status) {
        end_child();
        ADD_FAILURE() << "the test in the user namespace still ran after 90 s";
        return {};
    }
    std::ifstream in(report);
    const std::string json((std::istreambuf_iterator<char>(in)), {});
    if (json.find("\"result\": \"SKIPPED\"") != std::string::npos)
        return "skipped in the user namespace too (its output is above)";
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
        << "the test failed in the user namespace (its output is above)";
    EXPECT_NE(json.find("\"result\": \"COMPLETED\""), std::string::npos)
        << "the test did not run in the user namespace: " << json;
    return {};
}

} // namespace bus::test
