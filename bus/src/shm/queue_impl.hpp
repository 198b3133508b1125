// Queue::Impl, the state of one queue handle, and the little that more than one of the files
// implementing it needs; its calls are listed by the file that defines them. The protocol
// they implement is the comment at the top of queue.cpp.
//
// A handle is used by one thread at a time (shm_queue.hpp), so its own fields are plain; what
// other processes see is in the segment (ctrl, the headers, the ring), ordered by the protocol.
#pragma once

#include "bus/shm_queue.hpp"

#include "shm/layout.hpp"
#include "shm/segment.hpp"

#include "bus/unique_fd.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

namespace bus::shm {

namespace detail {

using Clock = std::chrono::steady_clock;

// How long blocking calls spin before they sleep, unless set_spin() says otherwise.
constexpr std::chrono::nanoseconds default_spin = std::chrono::microseconds(20);
// How long a waiter sleeps before it looks at the other side's liveness again.
constexpr std::chrono::nanoseconds liveness_slice = std::chrono::milliseconds(20);

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

inline Clock::time_point deadline_after(Clock::time_point now, std::chrono::nanoseconds timeout) {
    if (timeout >= Clock::time_point::max() - now)
        return Clock::time_point::max();
    return now + std::chrono::duration_cast<Clock::duration>(timeout);
}

} // namespace detail

struct AsyncWait;

// The handle. The fields the inline fast paths use (ring, positions, the reservation, the
// record taken) are in detail::Hot (bus/detail/shm_hot.hpp), shared by inheritance.
struct Queue::Impl : detail::Hot {
    std::string name;
    std::string shm; // "/bus.NAME"
    UniqueFd fd;
    detail::Mapping mapping;
    detail::Control* ctrl = nullptr;
    std::chrono::nanoseconds spin = detail::default_spin;
    detail::Clock::time_point next_liveness{};
    // peer_gone(): the other role's `*_changes` count at its last look, and what it found
    std::uint32_t seen_changes = 0;
    std::error_code peer_verdict;

    // consumer, beyond Hot
    std::uint64_t skipped = 0;
    // mpsc: the claimed record the head is stuck on, and since when (see try_front_slow)
    std::uint64_t stuck_pos = ~std::uint64_t{0};
    std::uint32_t stuck_polls = 0;
    detail::Clock::time_point stuck_since{};
    bool check_claims = false; // set by the waits once per liveness slice
    bool saw_claim = false;    // the last look found the head claimed, not the ring empty

    // producer: asleep in reserve_wait() (its bit in producers_waiting is up)
    bool sync_waiting = false;
    std::uint32_t reservations = 0; // mpsc, not exclusive: counts to the next reap_due()
    // when reap_dead_waiters() may next look (it is paid for by a wake-up that may be for a
    // dead producer, so it runs at most once per liveness slice)
    detail::Clock::time_point next_reap{};

    UniqueFd notify_socket; // unbound datagram socket for waking async waiters
    std::shared_ptr<AsyncWait> async;

    // --- used by all of them, inline
    std::size_t max_record() const noexcept { return capacity; }
    void require(Role r, const char* what) const {
        if (role != r) [[unlikely]]
            wrong_end(what);
    }
    [[noreturn, gnu::cold, gnu::noinline]] void wrong_end(const char* what) const {
        throw std::logic_error(std::string("bus::shm::Queue::") + what + " on a " +
                               (role == Role::producer ? "producer" : "consumer") + " handle");
    }
    // barriers: see "Memory ordering" in queue.cpp (publish_barrier() is in Hot)
    void notify_consumer() noexcept {
        publish_barrier();
        if (ctrl->consumer_waiting.load(std::memory_order_relaxed) != 0)
            wake_consumer();
    }
    void notify_producers() noexcept {
        publish_barrier();
        if (ctrl->producers_waiting.load(std::memory_order_relaxed) != 0)
            wake_producers();
    }
    std::uint64_t my_bit() const noexcept { return std::uint64_t{1} << slot; }
    bool reap_due() noexcept {
        const auto now = detail::Clock::now();
        if (now < next_reap)
            return false;
        next_reap = now + detail::liveness_slice;
        return true;
    }
    bool other_side_alive() const noexcept {
        return detail::held_by_other(fd.get(), role == Role::producer ? detail::lock_consumer
                                                                      : detail::lock_producers);
    }
    bool liveness_due(detail::Clock::time_point now) {
        if (now < next_liveness)
            return false;
        next_liveness = now + detail::liveness_slice;
        return true;
    }

    // --- queue.cpp: the ring. The hot calls have an inlined fast path (shm_queue.hpp) for the
    // common case (exclusive, room, a committed record) and these for everything else.
    Result<std::span<std::byte>> try_reserve_slow(std::size_t n);
    bool has_room(std::size_t n) noexcept;
    void commit_slow(std::size_t used);
    void abort() noexcept;
    Result<std::span<const std::byte>> try_front_slow();
    void release();
    void advance(std::uint32_t extent, bool skip) noexcept;

    // --- reservation_lock.cpp: mpsc
    void lock_reserve() noexcept;
    void lock_reserve_slow() noexcept;
    void unlock_reserve() noexcept;
    void wake_lock_sleepers() noexcept;
    void wake_stealer() noexcept;
    void take_over_biased(std::uint32_t owner) noexcept;
    void release_bias() noexcept;
    bool lock_owner_dead(std::uint32_t owner) const noexcept;

    // --- waits.cpp: waking, spinning, sleeping, async
    void wake_consumer() noexcept;
    void wake_producers() noexcept;
    void send_notify(std::uint64_t token) noexcept;
    // ready() until it says true, or the spin is over
    template <class Ready>
    bool burst(std::chrono::nanoseconds timeout, bool backoff, Ready&& ready);
    template <class Ready>
    bool spin_until(detail::Clock::time_point deadline, bool backoff, Ready&& ready);
    Result<std::span<std::byte>> reserve_wait(std::size_t n, std::chrono::nanoseconds timeout);
    Result<std::span<const std::byte>> try_front();
    Result<std::span<const std::byte>> front_wait(std::chrono::nanoseconds timeout);
    void async_wait(boost::asio::io_context& io, std::size_t record_size,
                    std::chrono::nanoseconds timeout,
                    std::unique_ptr<detail::WaitCompletion> completion);
    void cancel();
    void end_async() noexcept; // detaching

    // --- attach.cpp: attaching and detaching, the dead
    std::error_code attach();
    std::atomic<std::uint32_t>& changes(Role r) const noexcept {
        return r == Role::producer ? ctrl->producer_changes : ctrl->consumer_changes;
    }
    ~Impl();
    std::error_code peer_gone(bool due) noexcept;
    std::error_code look_for_peers(std::uint32_t changes_seen) const noexcept;
    bool claimer_dead(std::uint64_t control) const noexcept;
    void reap_slot_waits(std::size_t i) noexcept;
    void reap_dead_waiters() noexcept;
    bool reap_if_dead(std::size_t i) noexcept;
};

} // namespace bus::shm
