// A process's resident memory and CPU time, read from /proc: what `bus cluster ls` shows of each
// worker, and what the supervisor holds against an app's max_memory.
#pragma once

#include <cstdint>

#include <sys/types.h>

namespace bus::cluster::detail {

// Resident memory in bytes, from /proc/PID/statm (0 when it cannot be read: the process is gone).
std::uint64_t rss_bytes(pid_t pid);

// User plus system CPU time in milliseconds, from /proc/PID/stat (0 when it cannot be read).
std::uint64_t cpu_ms(pid_t pid);

} // namespace bus::cluster::detail
