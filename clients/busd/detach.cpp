#include "detach.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include <fcntl.h>
#include <unistd.h>

namespace busd {

int detach(const std::string& log_file, int& ready) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) < 0)
        return -1;
    const pid_t first = ::fork();
    if (first < 0)
        return -1;
    if (first > 0) {
        ::close(p[1]);
        char ok = 0;
        const ssize_t n = ::read(p[0], &ok, 1);
        std::_Exit(n == 1 ? 0 : 1);
    }
    ::close(p[0]);
    ::setsid();
    if (::fork() != 0)
        std::_Exit(0);
    const int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    const int log = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (null < 0 || log < 0) {
        std::fprintf(stderr, "busd: cannot open log file %s: %s\n", log_file.c_str(),
                     std::strerror(errno));
        std::_Exit(1);
    }
    ::dup2(null, 0);
    ::dup2(log, 1);
    ::dup2(log, 2);
    ::close(null);
    ::close(log);
    ready = p[1];
    return 0;
}

void ready_to_serve(int ready, const std::string& pid_file) {
    std::ofstream(pid_file) << ::getpid() << "\n";
    const char ok = 1;
    (void)!::write(ready, &ok, 1);
    ::close(ready);
}

} // namespace busd
