// The operating-system side of a queue segment: names, the mapping that owns the memory, the
// byte locks that tell who is alive, and the futex and membarrier calls.
//
// Why plain shm_open + mmap and not boost::interprocess::shared_memory_object/mapped_region:
// Boost throws interprocess_exception for ordinary outcomes (the name exists, does not exist,
// permission denied) where bus returns the errno; it cannot reserve address space and map the
// ring twice back to back (the mirror that keeps every record contiguous); and the segment's
// descriptor has to stay open for the OFD locks that carry liveness. Boost's object is itself a
// thin wrapper over shm_open (it lives in /dev/shm too), so nothing is lost.
#pragma once

#include "bus/error.hpp"
#include "bus/shm_queue.hpp"
#include "shm/layout.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <sys/types.h>

namespace bus::shm::detail {

// Queues are the shm objects "bus.NAME" (files /dev/shm/bus.NAME on Linux).
inline constexpr std::string_view name_prefix = "bus.";
inline constexpr const char* shm_directory = "/dev/shm";
inline constexpr std::size_t max_name = 200;

// "/bus.NAME" for shm_open, or std::errc::invalid_argument for a name outside
// [A-Za-z0-9._-]{1,200}.
Result<std::string> segment_name(std::string_view name);

std::size_t page_size() noexcept;
std::size_t control_size() noexcept; // sizeof(Control) rounded up to pages
// The record headers (one per line of the ring) rounded up to pages; they follow the control
// block, and the ring follows them at ring_offset().
std::size_t headers_size(std::size_t capacity) noexcept;
std::size_t ring_offset(std::size_t capacity) noexcept;

// A move-only mapping, unmapped in the destructor (as iceoryx's PosixMemoryMap).
class Mapping {
public:
    Mapping() noexcept = default;
    Mapping(void* base, std::size_t size) noexcept : base_(base), size_(size) {}
    Mapping(Mapping&& other) noexcept;
    Mapping& operator=(Mapping&& other) noexcept;
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping();

    std::byte* data() const noexcept { return static_cast<std::byte*>(base_); }
    std::size_t size() const noexcept { return size_; }

private:
    void* base_ = nullptr;
    std::size_t size_ = 0;
};

// The control block and the headers followed by the ring mapped twice:
// [control][headers][ring][ring again], all shared with the segment, read-write.
Result<Mapping> map_queue(int fd, std::size_t capacity);
// The first `size` bytes of the segment, read-only (for inspection).
Result<Mapping> map_read_only(int fd, std::size_t size);

// The counters of the queue (Stats), read from its control block.
Stats read_stats(const Control& c) noexcept;

// Whether `id` describes a queue this build can use, in a file of `file_size` bytes.
std::error_code check_layout(const Identity& id, std::uint64_t file_size) noexcept;
// Whether the segment behind `fd` (of `file_size` bytes) was fully initialized by its creator.
bool segment_ready(int fd, std::uint64_t file_size) noexcept;

// OFD byte locks on the segment file. `type` is F_RDLCK, F_WRLCK or F_UNLCK. Without `wait`,
// a conflicting lock is std::errc::resource_unavailable_try_again.
std::error_code lock_byte(int fd, long byte, short type, bool wait) noexcept;
// Whether a lock another open file description holds on `byte` would conflict with a write
// lock (our own description's locks never do). Errors count as held: never declare a peer dead
// on a doubt.
bool held_by_other(int fd, long byte) noexcept;

// Field 22 of /proc/PID/stat (start time in clock ticks since boot), 0 if there is no such
// process. A pid with the same start time is the same process.
std::uint64_t process_start_time(pid_t pid) noexcept;

// Shared (not private) futex calls on a word of the segment.
void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                std::chrono::nanoseconds timeout) noexcept;
void futex_wake_all(std::atomic<std::uint32_t>& word) noexcept;

// What this process can do: membarrier when it registered for MEMBARRIER_CMD_GLOBAL_EXPEDITED
// (BUS_SHM_NO_MEMBARRIER=1 in the environment forces fence, for tests).
Sync process_sync() noexcept;
// The sleeper's side of the barrier pair (see queue.cpp): a full fence, and under
// Sync::membarrier a membarrier() that serializes every registered process's running threads.
void heavy_barrier(Sync sync) noexcept;

} // namespace bus::shm::detail
