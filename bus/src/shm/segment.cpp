#include "shm/segment.hpp"

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include <fcntl.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace bus::shm::detail {

Result<std::string> segment_name(std::string_view name) {
    if (name.empty() || name.size() > max_name || name == "." || name == "..")
        return std::make_error_code(std::errc::invalid_argument);
    for (char c : name) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
        if (!ok)
            return std::make_error_code(std::errc::invalid_argument);
    }
    std::string shm;
    shm.reserve(1 + name_prefix.size() + name.size());
    shm.append("/").append(name_prefix).append(name);
    return shm;
}

std::size_t page_size() noexcept {
    static const std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    return size;
}

std::size_t control_size() noexcept {
    const std::size_t page = page_size();
    return (sizeof(Control) + page - 1) / page * page;
}

// --- Mapping --------------------------------------------------------------------------------

Mapping::Mapping(Mapping&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)), size_(std::exchange(other.size_, 0)) {}

Mapping& Mapping::operator=(Mapping&& other) noexcept {
    if (this != &other) {
        if (base_)
            ::munmap(base_, size_);
        base_ = std::exchange(other.base_, nullptr);
        size_ = std::exchange(other.size_, 0);
    }
    return *this;
}

Mapping::~Mapping() {
    if (base_)
        ::munmap(base_, size_);
}

std::size_t headers_size(std::size_t capacity) noexcept {
    const std::size_t page = page_size();
    return (capacity / record_align * sizeof(RecordHeader) + page - 1) / page * page;
}

std::size_t ring_offset(std::size_t capacity) noexcept {
    return control_size() + headers_size(capacity);
}

Result<Mapping> map_queue(int fd, std::size_t capacity) {
    const std::size_t control = ring_offset(capacity); // the control block and the headers
    const std::size_t total = control + 2 * capacity;
    // Reserve the whole range first, so the two views of the ring land back to back and nothing
    // else can be mapped between them; then map the segment over it.
    void* base =
        ::mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED)
        return last_error();
    Mapping mapping(base, total);
    auto* bytes = static_cast<std::byte*>(base);
    // MAP_POPULATE: fault the pages in now rather than on the first lap of the hot path.
    if (::mmap(bytes, control + capacity, PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_FIXED | MAP_POPULATE, fd, 0) == MAP_FAILED)
        return last_error();
    if (::mmap(bytes + control + capacity, capacity, PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_FIXED | MAP_POPULATE, fd,
               static_cast<off_t>(control)) == MAP_FAILED)
        return last_error();
    return mapping;
}

Result<Mapping> map_read_only(int fd, std::size_t size) {
    void* base = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return last_error();
    return Mapping(base, size);
}

Stats read_stats(const Control& c) noexcept {
    Stats s;
    s.capacity = c.id.capacity;
    const std::uint64_t head = c.head.load(std::memory_order_acquire);
    const std::uint64_t tail = c.tail.load(std::memory_order_acquire);
    s.depth_bytes = tail >= head ? tail - head : 0;
    s.produced = c.produced.load(std::memory_order_relaxed);
    s.consumed = c.consumed.load(std::memory_order_relaxed);
    s.skipped =
        c.skipped.load(std::memory_order_relaxed) + c.abandoned.load(std::memory_order_relaxed);
    s.depth_records = s.produced > s.consumed ? s.produced - s.consumed : 0;
    s.waiting_producers = static_cast<std::uint32_t>(
        std::popcount(c.producers_waiting.load(std::memory_order_relaxed)));
    return s;
}

std::error_code check_layout(const Identity& id, std::uint64_t file_size) noexcept {
    if (std::memcmp(id.magic, magic, sizeof magic) != 0 || id.version != format_version ||
        id.layout != layout_fingerprint() || id.control_size != control_size())
        return errc::layout_mismatch;
    if (id.capacity < page_size() || id.capacity > max_capacity ||
        (id.capacity & (id.capacity - 1)) != 0)
        return errc::layout_mismatch;
    if (file_size != ring_offset(id.capacity) + id.capacity)
        return errc::layout_mismatch;
    if (id.mode != 1 && id.mode != 2) // Mode::spsc, Mode::mpsc
        return errc::layout_mismatch;
    if (id.sync != static_cast<std::uint32_t>(Sync::fence) &&
        id.sync != static_cast<std::uint32_t>(Sync::membarrier))
        return errc::layout_mismatch;
    return {};
}

bool segment_ready(int fd, std::uint64_t file_size) noexcept {
    // Never map past the end of the file: touching that page would be SIGBUS.
    if (file_size < control_size())
        return false;
    auto view = map_read_only(fd, control_size());
    if (!view)
        return false;
    const auto* c = reinterpret_cast<const Control*>(view.value().data());
    return c->ready.load(std::memory_order_acquire) == 1;
}

// --- locks ----------------------------------------------------------------------------------

std::error_code lock_byte(int fd, long byte, short type, bool wait) noexcept {
    struct flock fl {};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    for (;;) {
        if (::fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl) == 0)
            return {};
        if (errno == EINTR)
            continue;
        if (errno == EACCES || errno == EAGAIN)
            return std::make_error_code(std::errc::resource_unavailable_try_again);
        return last_error();
    }
}

bool held_by_other(int fd, long byte) noexcept {
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    if (::fcntl(fd, F_OFD_GETLK, &fl) != 0)
        return true;
    return fl.l_type != F_UNLCK;
}

std::uint64_t process_start_time(pid_t pid) noexcept {
    if (pid <= 0)
        return 0;
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
    std::FILE* f = std::fopen(path, "re");
    if (!f)
        return 0;
    char buf[1024];
    const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = '\0';
    // The command name (field 2) is in parentheses and may contain anything: count fields from
    // the last ')'. Field 3 follows it; start time is field 22.
    const char* p = std::strrchr(buf, ')');
    if (!p)
        return 0;
    int field = 2;
    for (++p; *p && field < 22; ++p)
        if (*p == ' ')
            ++field;
    return std::strtoull(p, nullptr, 10);
}

// --- futex and membarrier -------------------------------------------------------------------

void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                std::chrono::nanoseconds timeout) noexcept {
    if (timeout <= std::chrono::nanoseconds::zero())
        return;
    timespec ts{};
    ts.tv_sec = static_cast<time_t>(timeout.count() / 1000000000);
    ts.tv_nsec = static_cast<long>(timeout.count() % 1000000000);
    // Not FUTEX_PRIVATE_FLAG: the waker is another process. The kernel compares the word with
    // `expected` under the futex bucket lock, so a wake between our check and this call is not
    // lost (it changed the word first). EAGAIN, EINTR and ETIMEDOUT all mean "look again".
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT, expected, &ts,
              nullptr, 0);
}

void futex_wake_all(std::atomic<std::uint32_t>& word) noexcept {
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, INT32_MAX, nullptr,
              nullptr, 0);
}

Sync process_sync() noexcept {
    static Sync sync = Sync::fence;
    static std::once_flag once;
    std::call_once(once, [] {
        const char* off = std::getenv("BUS_SHM_NO_MEMBARRIER");
        if (off && *off && std::strcmp(off, "0") != 0)
            return;
        const long commands = ::syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
        if (commands < 0 || !(commands & MEMBARRIER_CMD_GLOBAL_EXPEDITED))
            return;
        if (::syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0)
            sync = Sync::membarrier;
    });
    return sync;
}

void heavy_barrier(Sync sync) noexcept {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (sync == Sync::membarrier) {
        // Cannot fail once the query said the command exists; if it ever did, the waiter would
        // still wake at its next liveness slice.
        ::syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0);
    }
}

} // namespace bus::shm::detail
