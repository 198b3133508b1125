// /proc readers for the supervisor (proc_stats.hpp).
#include "cluster/proc_stats.hpp"

#include <cstdio>
#include <cstring>
#include <string>

#include <unistd.h>

namespace bus::cluster::detail {

std::uint64_t rss_bytes(pid_t pid) {
    std::uint64_t out = 0;
    if (FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/statm").c_str(), "re")) {
        unsigned long long size = 0, resident = 0;
        if (std::fscanf(f, "%llu %llu", &size, &resident) == 2)
            out = resident * static_cast<unsigned long long>(::sysconf(_SC_PAGESIZE));
        std::fclose(f);
    }
    return out;
}

std::uint64_t cpu_ms(pid_t pid) {
    std::uint64_t out = 0;
    if (FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "re")) {
        char buffer[1024];
        const std::size_t n = std::fread(buffer, 1, sizeof buffer - 1, f);
        std::fclose(f);
        buffer[n] = '\0';
        // Fields after the command (which may hold spaces) start after the last ')'.
        if (const char* p = std::strrchr(buffer, ')')) {
            unsigned long long utime = 0, stime = 0;
            // state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
            if (std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
                            &stime) == 2)
                out = (utime + stime) * 1000 /
                      static_cast<unsigned long long>(::sysconf(_SC_CLK_TCK));
        }
    }
    return out;
}

} // namespace bus::cluster::detail
