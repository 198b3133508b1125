// The bytes of a queue segment, as every process that maps it sees them. Changing anything here
// changes layout_fingerprint(), so a build with another layout refuses the segment
// (errc::layout_mismatch) instead of misreading it; bump format_version for changes of meaning
// that keep the sizes.
//
//   [ Control (control_size bytes, page-aligned) ]
//   [ RecordHeader per line of the ring (capacity / 4 bytes, rounded up to a page) ]
//   [ ring (capacity bytes, a power of two) ]
//
// The ring is mapped twice, back to back, so a record that runs past the end of the ring is
// still contiguous in memory (queue.cpp). Positions (head, tail) are byte counts since
// creation; a record starts at ring[position & (capacity - 1)], on a cache line, and its header
// is the one of that line.
#pragma once

#include "bus/detail/shm_hot.hpp"
#include "core/fnv1a.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace bus::shm::detail {

inline constexpr char magic[8] = {'b', 'u', 's', '.', 's', 'h', 'm', 'q'};
// 2: the waiter words are slot bitmasks; 3: record headers beside the ring, not in it;
// 4: the last exclusive record named beside tail; 5: arrivals and clean departures counted
inline constexpr std::uint32_t format_version = 5;
inline constexpr std::size_t max_peers = 64; // one bit each in the waiter bitmasks
inline constexpr std::size_t max_capacity = std::size_t{1} << 30;

// cache_line, record_align, Sync, RecordState, RecordHeader and its packing are in
// bus/detail/shm_hot.hpp, which the inline fast paths of shm_queue.hpp share.

enum class SlotState : std::uint32_t { free = 0, attached = 1 };

// One attached handle. A slot is owned by whoever holds its byte lock (lock_slot(i)); the
// fields are for the other processes: who it is, and how to wake it when it waits
// asynchronously.
struct alignas(cache_line) PeerSlot {
    std::atomic<std::uint32_t> state;      // SlotState; attached and unlocked = its owner died
    std::atomic<std::uint32_t> role;       // Role
    std::atomic<std::uint32_t> generation; // +1 at every attach
    std::atomic<std::int32_t> pid;
    std::atomic<std::uint64_t> start_time; // of pid, in clock ticks since boot
    std::atomic<std::uint64_t> notify;     // producers: datagram token while waiting async
    // mpsc producer holding the reservation lock biased: 1 from reserve() to commit()/abort()
    // (futex word: a producer taking the lock over waits on it; "One producer" in queue.cpp)
    std::atomic<std::uint32_t> reserving;
};

inline constexpr std::uint32_t lock_biased = 1u << 31;

// Consumer waiting bits.
inline constexpr std::uint32_t waiting_sync = 1;
inline constexpr std::uint32_t waiting_async = 2;

// What a process checks before trusting anything else in the segment; written once by the
// creator, before `ready`.
struct Identity {
    char magic[8];
    std::uint32_t version;
    std::uint32_t layout;
    std::uint64_t capacity;
    std::uint32_t control_size;
    std::uint32_t mode; // Mode
    std::uint32_t sync; // Sync
    std::int32_t creator_pid;
    std::uint64_t creator_start_time;
};

struct Control {
    Identity id;
    std::atomic<std::uint32_t> ready; // 1 once `id` and everything else is initialized

    // --- written by producers on every record ---
    alignas(cache_line) std::atomic<std::uint64_t> tail; // end of the last reserved record
    std::atomic<std::uint64_t> produced;
    // the last record an exclusive producer committed, for a consumer one record behind
    // (Hot::commit_exclusive, Hot::take_lone)
    std::atomic<std::uint64_t> last;

    // --- written by the consumer on every record ---
    alignas(cache_line) std::atomic<std::uint64_t> head; // start of the next unread record
    std::atomic<std::uint64_t> consumed;
    std::atomic<std::uint64_t> skipped;

    // --- mpsc: the reservation lock: 0, or its owner ((slot + 1) | generation << 8), with
    // lock_biased when the owner holds it across records (the only producer) ---
    alignas(cache_line) std::atomic<std::uint32_t> reserve_lock;
    std::atomic<std::uint64_t> lock_sleepers;     // bit s: the producer of slot s sleeps on it
    std::atomic<std::uint64_t> producers_present; // bit s: slot s holds a producer (a hint)
    // records a producer died writing while it held the lock biased: they never entered the
    // ring, and whoever finds the dead producer's `reserving` flag up counts them here
    std::atomic<std::uint64_t> abandoned;

    // --- read by producers on every record, written when the consumer starts waiting ---
    alignas(cache_line) std::atomic<std::uint32_t> consumer_waiting; // waiting_* bits
    std::atomic<std::uint64_t> consumer_notify; // datagram token of the async waiter

    // --- read by the consumer on every record, written when producers start waiting ---
    // Bit s: the producer of slot s waits for room (sync or async; async alone). Bitmasks and
    // not counts, so the waits of a producer that died asleep can be taken back by whoever
    // finds its slot dead (reap_dead_waiters() in attach.cpp): clearing a bit is idempotent, a
    // count could only be guessed at.
    alignas(cache_line) std::atomic<std::uint64_t> producers_waiting;
    std::atomic<std::uint64_t> producers_async;

    // --- per role, bumped by a handle once it has attached (its role's lock held) and once it
    // has left cleanly (the lock gone): "Leaving" in queue.cpp. Nonzero with nobody of that
    // role attached is errc::peer_closed; unchanged since a waiter's last look, nothing but a
    // death can have changed what that look found.
    alignas(cache_line) std::atomic<std::uint32_t> producer_changes;
    std::atomic<std::uint32_t> consumer_changes;

    // --- futex words, bumped by whoever wakes the other side ---
    alignas(cache_line) std::atomic<std::uint32_t> data_seq;
    alignas(cache_line) std::atomic<std::uint32_t> space_seq;

    PeerSlot slots[max_peers];
};

// Advisory record locks (Linux OFD locks) on bytes of the segment file. The kernel drops them
// when the process dies, which is what makes them the liveness signal.
inline constexpr long lock_holder = 0;    // read-locked by every handle; create/remove test it
inline constexpr long lock_producers = 1; // spsc: write-locked by the producer; mpsc: read
inline constexpr long lock_consumer = 2;  // write-locked by the consumer
constexpr long lock_slot(std::size_t i) {
    return 64 + static_cast<long>(i);
}

// A fingerprint of the layout: sizes and offsets a reader depends on.
constexpr std::uint32_t layout_fingerprint() {
    const std::uint64_t parts[] = {
        sizeof(Identity),
        sizeof(Control),
        offsetof(Control, tail),
        offsetof(Control, last),
        offsetof(Control, head),
        offsetof(Control, reserve_lock),
        offsetof(Control, lock_sleepers),
        offsetof(Control, producers_present),
        offsetof(PeerSlot, reserving),
        offsetof(Control, consumer_waiting),
        offsetof(Control, producers_waiting),
        offsetof(Control, producer_changes),
        offsetof(Control, consumer_changes),
        offsetof(Control, data_seq),
        offsetof(Control, space_seq),
        offsetof(Control, slots),
        sizeof(PeerSlot),
        max_peers,
        sizeof(RecordHeader),
        record_align,
        sizeof(void*),
        std::atomic<std::uint64_t>::is_always_lock_free,
    };
    bus::detail::Fnv1a fnv; // each part's 8 bytes, least significant first
    for (auto p : parts)
        for (int i = 0; i < 8; ++i)
            fnv.add(static_cast<std::uint8_t>(p >> (8 * i)));
    const std::uint64_t h = fnv.value();
    return static_cast<std::uint32_t>(h ^ (h >> 32));
}

static_assert(max_peers <= 64, "the waiter words have one bit per slot");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "queue words must be lock-free to be shared between processes");

} // namespace bus::shm::detail
