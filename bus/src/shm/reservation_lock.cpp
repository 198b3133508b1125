// The mpsc reservation lock: the word that serializes the producers' claims, held per record,
// or across records by a producer that is the only one (held biased), and how another producer
// takes it over from that one. Why it is built so: "MPSC" and "One producer" in queue.cpp; its
// barriers pair as "Memory ordering" there says.
//
// Invariants kept here:
// - The lock word is 0, or its owner's id ((slot + 1) | generation << 8), with lock_biased
//   while the owner holds it across records.
// - Unlocking is a plain release store: a producer that sleeps on the word has its bit up in
//   lock_sleepers before it looks at the word again, and an unlocker that sees a bit up wakes.
// - A producer that took the lock from a biased owner claims nothing until that owner's
//   `reserving` flag is down, or the owner is found dead: the owner's open record is then
//   committed, or never entered the ring.
// - The lock is taken from an owner only while it holds it biased, or once it is found dead.
#include "shm/queue_impl.hpp"

#include "shm/layout.hpp"
#include "shm/segment.hpp"

#include <atomic>
#include <cstdint>

namespace bus::shm {

using namespace detail;

void Queue::Impl::lock_reserve() noexcept {
    const std::uint32_t me = (slot + 1) | (generation & 0xffff) << 8;
    std::uint32_t expected = 0;
    if (ctrl->reserve_lock.compare_exchange_strong(expected, me, std::memory_order_acquire,
                                                   std::memory_order_relaxed))
        return;
    lock_reserve_slow();
}

[[gnu::noinline]] void Queue::Impl::lock_reserve_slow() noexcept {
    auto& word = ctrl->reserve_lock;
    const std::uint32_t me = (slot + 1) | (generation & 0xffff) << 8;
    // The critical section is a few stores: spin a little first. A lock held biased (by the
    // producer that was alone until we came) is taken over at once.
    for (int i = 0; i < 100; ++i) {
        std::uint32_t v = word.load(std::memory_order_relaxed);
        if ((v == 0 || (v & lock_biased)) &&
            word.compare_exchange_weak(v, me, std::memory_order_acquire,
                                       std::memory_order_relaxed)) {
            if (v & lock_biased)
                take_over_biased(v);
            return;
        }
        cpu_relax();
    }
    // Then sleep. Unlocking is a plain store (no locked instruction on the hot path), so the
    // sleepers announce themselves (a bit per slot) and wake-ups follow the same barrier pairing as
    // the data waits ("Memory ordering" in queue.cpp): W(sleepers) [B1] R(word) here, W(word = 0)
    // [B2] R(sleepers) in unlock_reserve().
    ctrl->lock_sleepers.fetch_or(my_bit(), std::memory_order_seq_cst);
    heavy_barrier(sync);
    auto check_owner = Clock::now() + liveness_slice;
    for (;;) {
        std::uint32_t v = word.load(std::memory_order_relaxed);
        if (v == 0 || (v & lock_biased)) {
            if (word.compare_exchange_weak(v, me, std::memory_order_acquire,
                                           std::memory_order_relaxed)) {
                if (v & lock_biased)
                    take_over_biased(v);
                break;
            }
            continue;
        }
        futex_wait(word, v, liveness_slice);
        const auto now = Clock::now();
        if (now < check_owner)
            continue;
        check_owner = now + liveness_slice;
        // Held for a whole slice: is its owner alive? If it died in the critical section, take
        // the lock over (see "Death" in queue.cpp for why what it left is safe).
        std::uint32_t cur = word.load(std::memory_order_relaxed);
        if (cur != 0 && lock_owner_dead(cur) &&
            word.compare_exchange_strong(cur, me, std::memory_order_acquire,
                                         std::memory_order_relaxed))
            break;
    }
    ctrl->lock_sleepers.fetch_and(~my_bit(), std::memory_order_relaxed);
}

// We took the lock from `owner`, which held it biased: it may be between enter_exclusive() and
// its commit. The membarrier pairs with the signal fences in enter_exclusive() and
// leave_exclusive() ("Memory ordering" in queue.cpp): either the owner's next enter_exclusive()
// sees the lock is no longer its own, or we see its `reserving` flag up and wait for it to come
// down (its release store, after its tail store, tells us where tail is).
void Queue::Impl::take_over_biased(std::uint32_t owner) noexcept {
    heavy_barrier(sync);
    const std::uint32_t s = (owner & 0xff) - 1;
    if (s >= max_peers)
        return;
    auto& flag = ctrl->slots[s].reserving;
    auto check_owner = Clock::now() + liveness_slice;
    for (unsigned i = 0; flag.load(std::memory_order_acquire) != 0; ++i) {
        if (i < 2000) {
            cpu_relax();
            continue;
        }
        // Its commit wakes us (leave_exclusive() sees the lock is no longer its own).
        futex_wait(flag, 1, liveness_slice);
        const auto now = Clock::now();
        if (now >= check_owner) {
            check_owner = now + liveness_slice;
            if (lock_owner_dead(owner)) {
                // Died reserving: its tail never moved, nothing to step over; count it.
                if (((owner >> 8) & 0xffff) ==
                    (ctrl->slots[s].generation.load(std::memory_order_acquire) & 0xffff))
                    reap_if_dead(s);
                return;
            }
        }
    }
}

[[gnu::noinline]] void Queue::Impl::wake_stealer() noexcept {
    futex_wake_all(*reserving);
}

// Detaching: the lock held biased goes back, and we no longer count as a producer.
void Queue::Impl::release_bias() noexcept {
    ctrl->producers_present.fetch_and(~my_bit(), std::memory_order_relaxed);
    if (!exclusive)
        return;
    exclusive = false;
    std::uint32_t v = biased_id;
    if (ctrl->reserve_lock.compare_exchange_strong(v, 0, std::memory_order_release,
                                                   std::memory_order_relaxed) &&
        ctrl->lock_sleepers.load(std::memory_order_relaxed) != 0)
        wake_lock_sleepers();
    reserving->store(0, std::memory_order_release);
    futex_wake_all(*reserving);
}

void Queue::Impl::unlock_reserve() noexcept {
    ctrl->reserve_lock.store(0, std::memory_order_release);
    publish_barrier();
    if (ctrl->lock_sleepers.load(std::memory_order_relaxed) != 0)
        wake_lock_sleepers();
}

[[gnu::noinline]] void Queue::Impl::wake_lock_sleepers() noexcept {
    // As wake_producers(): a producer killed asleep on the lock leaves its bit up.
    if (reap_due()) {
        reap_dead_waiters();
        if (ctrl->lock_sleepers.load(std::memory_order_relaxed) == 0)
            return;
    }
    futex_wake_all(ctrl->reserve_lock);
}

bool Queue::Impl::lock_owner_dead(std::uint32_t owner) const noexcept {
    const std::uint32_t s = (owner & 0xff) - 1;
    if (s >= max_peers)
        return true;
    const PeerSlot& p = ctrl->slots[s];
    if ((p.generation.load(std::memory_order_acquire) & 0xffff) != ((owner >> 8) & 0xffff))
        return true;
    return !held_by_other(fd.get(), lock_slot(s));
}

} // namespace bus::shm
