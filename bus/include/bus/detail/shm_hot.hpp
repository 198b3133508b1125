// Internals of bus::shm::Queue that its inline fast paths need. Not API: it may change with any
// build (segments of another layout are refused at open, see bus/src/shm/layout.hpp).
//
// Why any of this is in a public header: a record of 64 bytes costs the ring about 10 ns, and a
// call into the library that returns a 40-byte Result through memory costs as much again, per
// side. So the common case (reserve/commit of an spsc record, front/release of a committed
// record) is inline in shm_queue.hpp, on the state below; everything else (mpsc, waiting,
// errors, liveness) stays out of line in bus/src/shm/queue.cpp, which explains the protocol.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace bus::shm {
enum class Mode : std::uint8_t;
enum class Role : std::uint8_t;
} // namespace bus::shm

namespace bus::shm::detail {

inline constexpr std::size_t cache_line = 64;
// Records start on a cache line, so no line holds the end of one record and the start of the
// next: the producer writing record k+1 never takes away the line the consumer is reading for
// record k. Measured against 16-byte alignment (denser: a 64-byte payload takes 80 bytes
// instead of 128) in bench/shm_bench.cpp: 0.48-0.62 of the minimal ring against 0.26-0.46.
// Each line of the ring has one RecordHeader in the header array beside it (four to a line):
// the header of the record that starts on that line. A 64-byte record is one line of the ring,
// as in a ring with no headers, where a header in front of it made two (format 3; the
// measurement is in bench/RESULTS.md, "Where the record header goes").
inline constexpr std::size_t record_align = cache_line;

// How far ahead of its tail a producer of small records asks for the lines it will write
// (prefetch_for_write()), and up to what extent a record is small: bench/RESULTS.md, "The
// producer's prefetch".
inline constexpr std::uint64_t producer_prefetch_distance = 1024;
inline constexpr std::uint32_t producer_prefetch_max_extent = 2 * cache_line;

// A consumer that finds records published after the one it takes, but fewer than this many
// bytes of them, is close behind a producer that is streaming. Read there, it takes the header
// line the producer is still filling (four records to a line), and its prefetchers the lines
// just ahead: each costs the producer a transfer back, the producer slows to the consumer's
// pace, and the two stay locked a few records apart at a fifth of their speed. So it lets the
// producer get ahead first (Queue::fall_behind): bench/RESULTS.md, "Format 3 and the
// consumer's trail".
inline constexpr std::uint64_t consumer_trail = 4096;

// How a waiter learns that it must wake: "Memory ordering" in bus/src/shm/queue.cpp.
enum class Sync : std::uint32_t {
    fence = 1,      // every publisher pays a full fence
    membarrier = 2, // publishers pay a compiler barrier; sleepers call membarrier()
};

enum class RecordState : std::uint8_t {
    claimed = 1,   // mpsc: space taken, bytes being written
    committed = 2, // readable
    aborted = 3,   // given up by its producer: the consumer steps over it
};

// The `last` word while no record is named there (Hot::commit_exclusive).
inline constexpr std::uint64_t no_record = ~std::uint64_t{0};

// The header of the record that starts at ring position p is headers[(p & mask) / record_align].
struct RecordHeader {
    // extent (32 bits: header + payload + padding) | state (8) | slot (8) | generation (16).
    // slot and generation name the producer that claimed the record (mpsc), so the consumer
    // can tell a slow producer from a dead one.
    std::atomic<std::uint64_t> control;
    std::uint32_t length; // payload bytes; written before the committing store
    std::uint32_t unused;
};
static_assert(sizeof(RecordHeader) == 16);

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

// Bytes a record of `n` payload bytes takes in the ring: whole lines, at least one (an empty
// record still needs a line of its own, for its header).
constexpr std::uint32_t extent_for(std::size_t n) {
    return static_cast<std::uint32_t>(((n == 0 ? 1 : n) + record_align - 1) & ~(record_align - 1));
}

// The state of one handle that the fast paths read and write.
struct Hot {
    // the mapping, and the segment's words (set when the handle attaches)
    std::byte* ring = nullptr;       // mapped twice back to back: records are contiguous
    RecordHeader* headers = nullptr; // one per line of the ring
    std::uint64_t capacity = 0;
    std::uint64_t mask = 0;
    std::uint64_t trail = 0; // consumer_trail, at most a quarter of the ring
    std::atomic<std::uint64_t>* tail_word = nullptr;
    std::atomic<std::uint64_t>* produced_word = nullptr;
    std::atomic<std::uint64_t>* last_word = nullptr;
    std::atomic<std::uint64_t>* head_word = nullptr;
    std::atomic<std::uint64_t>* consumed_word = nullptr;
    const std::atomic<std::uint32_t>* consumer_waiting = nullptr;
    const std::atomic<std::uint64_t>* producers_waiting = nullptr;
    Mode mode{};
    Role role{};
    Sync sync = Sync::fence;
    std::uint32_t slot = 0;
    std::uint32_t generation = 0;
    // pack_record(0, committed, slot, generation): a committed header is this | extent
    std::uint64_t committed_tag = 0;

    // producer
    // Reserves and commits as spsc does (tail moves at commit, in one release store): the spsc
    // producer, and an mpsc producer holding the reservation lock biased (the only producer
    // attached; "One producer" in bus/src/shm/queue.cpp).
    bool exclusive = false;
    std::uint64_t tail = 0;       // exclusive: our copy of the tail word (its only writer)
    std::uint64_t head_cache = 0; // a head seen earlier: the real one is at least this far
    std::uint64_t produced = 0;   // exclusive
    // mpsc: the lock word, our slot's `reserving` flag, and the lock word's value while we
    // hold it biased
    const std::atomic<std::uint32_t>* reserve_lock = nullptr;
    std::atomic<std::uint32_t>* reserving = nullptr;
    std::uint32_t biased_id = 0;
    struct Reservation {
        bool active = false;
        std::uint64_t pos = 0;
        std::uint32_t extent = 0;
        std::size_t size = 0;
    } reservation;

    // consumer
    std::uint64_t head = 0;       // our copy of the head word (we are its only writer)
    std::uint64_t tail_cache = 0; // a tail seen earlier: the real one is at least this far
    std::uint64_t consumed = 0;
    struct Taken {
        bool active = false;
        std::uint64_t pos = 0;
        std::uint32_t extent = 0;
        std::uint32_t length = 0;
    } taken;

    // The exclusive producer's commit of its reservation with `used` bytes. The record is also
    // named beside tail, in the line the consumer reads anyway, so a consumer one record behind
    // takes it without the header's line (take_lone()): one word, its position (a multiple
    // of record_align) | (used - 1) % record_align, from which and its extent (tail - head
    // when it is alone) the length follows. An empty record is not named. The tail store
    // publishes.
    void commit_exclusive(RecordHeader* header, std::uint32_t used) noexcept {
        const std::uint32_t extent = extent_for(used); // may shrink: tail has not moved
        header->length = used;
        header->control.store(committed_tag | extent, std::memory_order_relaxed);
        last_word->store(used == 0 ? no_record : reservation.pos | ((used - 1) % record_align),
                         std::memory_order_relaxed);
        tail = reservation.pos + extent;
        produced_word->store(++produced, std::memory_order_relaxed);
        tail_word->store(tail, std::memory_order_release);
    }
    // Takes the record at head when an exclusive producer committed it last and tail
    // (tail_cache, just loaded) has moved past it: then it is the only record published (every
    // store of tail past a record is preceded by a store of `last`: a later record's name, or
    // no_record for an mpsc claim), its extent is tail - head and its length follows from the
    // name, with no look at its header. Positions never repeat, so a name matches one record
    // only; a peer's garbage is bounded like a header's. False when the record is not alone.
    bool take_lone() noexcept {
        const std::uint64_t last = last_word->load(std::memory_order_relaxed);
        const std::uint64_t extent = tail_cache - head;
        if ((last & ~std::uint64_t{record_align - 1}) != head || extent % record_align != 0 ||
            extent > capacity)
            return false;
        const auto length =
            static_cast<std::uint32_t>(extent - record_align + 1 + last % record_align);
        taken = {true, head, static_cast<std::uint32_t>(extent), length};
        return true;
    }

    RecordHeader* header_at(std::uint64_t pos) const noexcept {
        return headers + (pos & mask) / record_align;
    }
    std::byte* payload_at(std::uint64_t pos) const noexcept { return ring + (pos & mask); }
    // Whether a record's header (a peer's writing) is one try_front() may hand out: committed,
    // extent a whole number of lines (so at least one), within the `avail` bytes published and
    // within the ring (`avail` is tail - head, and tail is a peer's writing too), the payload
    // within the extent. extent - 1 wraps when extent is 0, so one comparison bounds both ends.
    bool readable(std::uint64_t control, std::uint32_t length, std::uint64_t avail) const noexcept {
        const std::uint32_t extent = record_extent(control);
        return record_state(control) == RecordState::committed && extent % record_align == 0 &&
               std::uint64_t{extent} - 1 < std::min(avail, capacity) && length <= extent;
    }

    // mpsc, exclusive: says a reservation is open, then checks the lock is still ours (another
    // producer may have taken it over). The stealer's half is a CAS and a membarrier.
    bool enter_exclusive() const noexcept {
        reserving->store(1, std::memory_order_relaxed);
        std::atomic_signal_fence(std::memory_order_seq_cst);
        return reserve_lock->load(std::memory_order_relaxed) == biased_id;
    }
    // ... and the end of it: whether a stealer may wait for it (then it must be woken).
    bool leave_exclusive() const noexcept {
        reserving->store(0, std::memory_order_release);
        std::atomic_signal_fence(std::memory_order_seq_cst);
        return reserve_lock->load(std::memory_order_relaxed) != biased_id;
    }

    // Asks for the line a few records on for writing while this record is written. The line
    // was last read by the consumer, a lap ago, and taking it back from the consumer's cache is
    // what a producer of small records waits for most. Larger records are streamed by the
    // hardware prefetcher; asking for theirs too bought nothing at 1 KiB and ran slower in one
    // set of rounds. Only lines the consumer has released: head_cache is a head seen earlier,
    // the real one is at least there. Unless the build targets PRFCHW this is a plain read
    // prefetch (prefetcht0); PREFETCHW itself, for this line and the header's, measured no
    // better (bench/RESULTS.md, "Format 3 and the consumer's trail").
    void prefetch_for_write(std::uint32_t need) const noexcept {
        const std::uint64_t at = tail + producer_prefetch_distance;
        if (need <= producer_prefetch_max_extent && at + need - head_cache <= capacity)
            __builtin_prefetch(ring + (at & mask), 1);
    }

    // The publisher's half of the barrier pair ("Memory ordering" in queue.cpp).
    void publish_barrier() const noexcept {
        if (sync == Sync::fence)
            std::atomic_thread_fence(std::memory_order_seq_cst);
        else
            std::atomic_signal_fence(std::memory_order_seq_cst);
    }
};

} // namespace bus::shm::detail
