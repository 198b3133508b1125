// Queue::Impl, the state of one queue handle, and the little that more than one of the files
// implementing it needs. The protocol they implement is the comment at the top of queue.cpp.
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

    ~Impl();

    std::size_t max_record() const noexcept { return capacity; }

    std::error_code attach();
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
    void wake_consumer() noexcept;
    void wake_producers() noexcept;
    void send_notify(std::uint64_t token) noexcept;
    std::uint64_t my_bit() const noexcept { return std::uint64_t{1} << slot; }
    void reap_slot_waits(std::size_t i) noexcept;
    void reap_dead_waiters() noexcept;
    bool reap_if_dead(std::size_t i) noexcept;
    bool reap_due() noexcept {
        const auto now = detail::Clock::now();
        if (now < next_reap)
            return false;
        next_reap = now + detail::liveness_slice;
        return true;
    }

    // liveness
    bool other_side_dead() const noexcept;
    bool other_side_alive() const noexcept {
        return detail::held_by_other(fd.get(), role == Role::producer ? detail::lock_consumer
                                                                      : detail::lock_producers);
    }
    bool claimer_dead(std::uint64_t control) const noexcept;
    bool liveness_due(detail::Clock::time_point now) {
        if (now < next_liveness)
            return false;
        next_liveness = now + detail::liveness_slice;
        return true;
    }

    // producer. The hot calls have an inlined fast path (shm_queue.hpp) for the common case
    // (exclusive, room, a committed record) and an out-of-line path for everything else.
    Result<std::span<std::byte>> try_reserve_slow(std::size_t n);
    Result<std::span<std::byte>> reserve_wait(std::size_t n, std::chrono::nanoseconds timeout);
    bool has_room(std::size_t n) noexcept;
    void commit_slow(std::size_t used);
    void abort() noexcept;
    void lock_reserve() noexcept;
    void lock_reserve_slow() noexcept;
    void unlock_reserve() noexcept;
    void wake_lock_sleepers() noexcept;
    void wake_stealer() noexcept;
    void take_over_biased(std::uint32_t owner) noexcept;
    void release_bias() noexcept;
    bool lock_owner_dead(std::uint32_t owner) const noexcept;

    // consumer
    Result<std::span<const std::byte>> try_front();
    Result<std::span<const std::byte>> try_front_slow();
    Result<std::span<const std::byte>> front_wait(std::chrono::nanoseconds timeout);
    void release();
    void advance(std::uint32_t extent, bool skip) noexcept;

    // Spinning. Most spinning waits end within a few hundred nanoseconds, and a clock read costs
    // 20-40 ns in a VM: burst() looks a few times without the clock before spin_until()
    // measures. `backoff` (the producer waiting for room) doubles the pause between looks, up
    // to about a microsecond: each look at `head` takes its line from the consumer, whose next
    // release() must take it back, so polling a full ring tightly slows the very consumer it
    // waits for, and the ring stays full (measured: half the throughput). A consumer waiting
    // for a record does not back off: that is the latency path.
    static constexpr unsigned max_pauses = 64;
    // An mpsc consumer whose head record is claimed but not yet committed looks less often:
    // each look takes the header's line from the producer that is about to commit into it
    // (measured with headers in the ring: +15-30% mpsc throughput).
    static constexpr unsigned claim_pauses = 8;
    template <class Ready>
    bool burst(std::chrono::nanoseconds timeout, bool backoff, Ready&& ready) {
        if (spin <= std::chrono::nanoseconds::zero() || timeout < std::chrono::microseconds(10))
            return false;
        unsigned pauses = 1;
        for (unsigned spent = 0; spent < 256; spent += pauses) {
            for (unsigned k = 0; k < pauses; ++k)
                detail::cpu_relax();
            saw_claim = false;
            if (ready())
                return true;
            if (backoff)
                pauses = std::min(2 * pauses, max_pauses);
            else
                pauses = saw_claim ? claim_pauses : 1;
        }
        return false;
    }
    template <class Ready>
    bool spin_until(detail::Clock::time_point deadline, bool backoff, Ready&& ready) {
        if (spin <= std::chrono::nanoseconds::zero())
            return false;
        const auto end = std::min(deadline, detail::deadline_after(detail::Clock::now(), spin));
        for (unsigned i = 1;; ++i) {
            saw_claim = false;
            if (ready())
                return true;
            const unsigned pauses = backoff ? max_pauses : saw_claim ? claim_pauses : 1;
            for (unsigned k = 0; k < pauses; ++k)
                detail::cpu_relax();
            if ((i & 63) == 0 && detail::Clock::now() >= end)
                return false;
        }
    }

    // async
    void async_wait(boost::asio::io_context& io, WaitHandler handler, std::size_t record_size);
    void cancel();
    void end_async() noexcept; // detaching
};

} // namespace bus::shm
