// The bytes of a queue segment, as every process that maps it sees them. Changing anything here
// changes layout_fingerprint(), so a build with another layout refuses the segment
// (errc::layout_mismatch) instead of misreading it; bump format_version for changes of meaning
// that keep the sizes.
//
//   [ Control (control_size bytes, page-aligned) ][ ring (capacity bytes, a power of two) ]
//
// The ring is mapped twice, back to back, so a record that runs past the end of the ring is
// still contiguous in memory (queue.cpp). Positions (head, tail) are byte counts since
// creation; a record starts at ring[position & (capacity - 1)], on a cache line.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace bus::shm::detail {

inline constexpr char magic[8] = {'b', 'u', 's', '.', 's', 'h', 'm', 'q'};
inline constexpr std::uint32_t format_version = 1;
inline constexpr std::size_t max_peers = 64;
inline constexpr std::size_t cache_line = 64;
// Records start on a cache line, so no line holds the end of one record and the start of the
// next: the producer writing record k+1 never takes away the line the consumer is reading for
// record k. Measured: 64-byte payloads in 128-byte records stream about twice as fast as in
// 80-byte ones, and as fast as a featureless ring of 64-byte slots (docs/decisions.md).
inline constexpr std::size_t record_align = cache_line;
inline constexpr std::size_t max_capacity = std::size_t{1} << 30;

// How a waiter learns that it must wake: see "Memory ordering" in queue.cpp.
enum class Sync : std::uint32_t {
    fence = 1,      // every publisher pays a full fence
    membarrier = 2, // publishers pay a compiler barrier; sleepers call membarrier()
};

enum class RecordState : std::uint8_t {
    claimed = 1,   // mpsc: space taken, bytes being written
    committed = 2, // readable
    aborted = 3,   // given up by its producer: the consumer steps over it
};

// Each record starts with this header; the payload follows at +16.
struct RecordHeader {
    // extent (32 bits: header + payload + padding) | state (8) | slot (8) | generation (16).
    // slot and generation name the producer that claimed the record (mpsc), so the consumer
    // can tell a slow producer from a dead one.
    std::atomic<std::uint64_t> control;
    std::uint32_t length; // payload bytes; written before the committing store
    std::uint32_t unused;
};
inline constexpr std::size_t record_header_size = sizeof(RecordHeader);
static_assert(record_header_size == 16);

constexpr std::uint64_t pack_record(std::uint32_t extent, RecordState state, std::uint32_t slot,
                                    std::uint32_t generation) {
    return std::uint64_t{extent} | std::uint64_t{static_cast<std::uint8_t>(state)} << 32 |
           std::uint64_t{slot & 0xff} << 40 | std::uint64_t{generation & 0xffff} << 48;
}
constexpr std::uint32_t record_extent(std::uint64_t c) {
    return static_cast<std::uint32_t>(c);
}
constexpr RecordState record_state(std::uint64_t c) {
    return static_cast<RecordState>((c >> 32) & 0xff);
}
constexpr std::uint32_t record_slot(std::uint64_t c) {
    return (c >> 40) & 0xff;
}
constexpr std::uint32_t record_generation(std::uint64_t c) {
    return (c >> 48) & 0xffff;
}

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
};

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

    // --- written by the consumer on every record ---
    alignas(cache_line) std::atomic<std::uint64_t> head; // start of the next unread record
    std::atomic<std::uint64_t> consumed;
    std::atomic<std::uint64_t> skipped;

    // --- mpsc: the reservation lock: 0, or its owner ((slot + 1) | generation << 8) ---
    alignas(cache_line) std::atomic<std::uint32_t> reserve_lock;
    std::atomic<std::uint32_t> lock_sleepers; // producers asleep on reserve_lock

    // --- read by producers on every record, written when the consumer starts waiting ---
    alignas(cache_line) std::atomic<std::uint32_t> consumer_waiting; // waiting_* bits
    std::atomic<std::uint64_t> consumer_notify; // datagram token of the async waiter

    // --- read by the consumer on every record, written when producers start waiting ---
    alignas(cache_line) std::atomic<std::uint32_t> producers_waiting; // count, sync + async
    std::atomic<std::uint32_t> producers_async;                       // count, async

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
        offsetof(Control, head),
        offsetof(Control, reserve_lock),
        offsetof(Control, lock_sleepers),
        offsetof(Control, consumer_waiting),
        offsetof(Control, producers_waiting),
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
    std::uint64_t h = 14695981039346656037ull; // FNV-1a
    for (auto p : parts) {
        for (int i = 0; i < 8; ++i) {
            h ^= (p >> (8 * i)) & 0xff;
            h *= 1099511628211ull;
        }
    }
    return static_cast<std::uint32_t>(h ^ (h >> 32));
}

static_assert(std::atomic<std::uint64_t>::is_always_lock_free &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "queue words must be lock-free to be shared between processes");

} // namespace bus::shm::detail
