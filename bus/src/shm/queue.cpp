// bus::shm::Queue — how the ring works, and why it is safe.
//
// THE RING. Records are [payload][padding to a cache line], and the RecordHeader of each (16
// bytes) is in the header array beside the ring, at the index of the record's first line (why:
// bus/detail/shm_hot.hpp, record_align). `tail` is where the next record will start, `head`
// where the next unread one starts; both count bytes since creation and never wrap (2^64
// bytes is centuries). The ring is mapped twice back to back, so a record that runs past the
// end continues in the second view and is contiguous in memory: no split records, no padding
// records, and any record up to the capacity fits. Room check: tail + extent - head <=
// capacity. Never overwrite: a full ring is errc::full or a wait.
//
// SPSC. The producer alone writes `tail`, the consumer alone writes `head`. The producer writes
// the header and payload with plain stores, then stores `tail` (release); the consumer loads
// `tail` (acquire) and may read everything below it. The consumer reads a record in place,
// then stores `head` (release); the producer loads `head` (acquire) before it reuses the
// bytes, so the consumer's reads happen-before the producer's overwrite. Each side caches the
// other's index and reloads it only when the cache says "full"/"empty", so in steady state
// each side touches the other's cache line once per batch, not once per record.
// The record just committed is also named beside tail (`last`, Hot::commit_exclusive), so a
// consumer that reloads tail and finds that one record alone takes it without fetching its
// header's line (Hot::take_lone): a round trip crosses two lines a leg (tail's and the
// payload's), as a ring without headers does.
//
// MPSC. Producers serialize only the reservation, under `reserve_lock`: read tail, check
// room, write the header as `claimed` with the claimer's slot and generation, store tail
// (release), unlock. They write payloads in parallel, outside the lock, and publish each
// record by storing its header as `committed` (release). The consumer reads a header (acquire)
// below tail: committed → deliver; aborted → step over; claimed → not yet (head of line waits
// for it). A claim was written before tail moved past it, so the consumer never reads a header
// left from an earlier lap.
//
// ONE PRODUCER. A lock taken per record costs a locked instruction, which waits for every
// earlier store of the producer (to lines the consumer is reading) to drain; and a tail that
// moves at reserve() shows the consumer a claimed record that it then polls while the producer
// writes into the same line. So an mpsc producer that finds itself the only one
// (producers_present, in a membarrier queue) keeps the lock across records, marked
// lock_biased, and reserves and commits as spsc does: no claim, tail moves at commit in one
// release store, no locked instruction. Its reservation is bracketed by its slot's
// `reserving` flag: enter_exclusive() raises it and then checks the lock is still its own;
// leave_exclusive() lowers it (release, after the tail store) and checks again. Another
// producer takes the lock over with a CAS, then membarrier() (the asymmetric pairing of
// "Memory ordering" below: the owner pays only compiler barriers), then waits for the flag to
// be down: either the owner's next enter_exclusive() sees the lock gone, or the taker sees the
// flag up and waits for the commit, whose release store tells it where tail is. The owner
// wakes a taker it sees (futex on the flag). The cost: a producer that comes while the lone
// one holds a reservation waits for that commit once, as it would for the lock. Death: the
// lone producer dies with the flag up: nothing entered the ring (tail moves at commit); the
// taker, the next producer to attach or the consumer (reap_dead_waiters) finds the flag up in a
// dead slot and counts the record in `abandoned` (shown in Stats::skipped). Fence-mode queues
// keep the lock per record (the owner would need a full fence per record).
//
// DEATH. Liveness is not guessed from pids: each handle holds OFD byte locks on the segment
// file (its role's byte, and its slot's byte), and the kernel drops them when the process
// dies, however it dies. So "slot s is alive" is one F_OFD_GETLK, with no pid-reuse race and
// no /proc parsing (pid and start time are still recorded, for `bus shm ls`).
// - Producer dies holding reserve_lock: waiters sleep in slices; after a slice they check the
//   owner (slot + generation in the lock word) and take the lock over. What the dead owner did
//   under the lock is either invisible (tail not yet moved: its header is overwritten) or a
//   claimed record (tail moved), which the next point handles.
// - Producer dies with a claimed record (mpsc): the record blocks the head. The consumer, once
//   it has been stuck on the same record for a while, checks the claimer: generation changed or
//   slot lock free means dead (a producer that leaves cleanly aborts its claim first). It reads
//   the header again — the claimer may have committed just before dying — and otherwise steps
//   over the record and counts it in `skipped`. An spsc producer that dies mid-record never
//   moved tail: nothing to skip, and its successor starts at tail.
// - Consumer dies: head only moves on release(), so a record it was reading is delivered
//   again to the next consumer; committed records stay.
// - Waiters: "the other side died" = no live process holds the other role's lock byte, and a
//   slot of that role is still marked attached (a clean detach marks it free first) with its
//   byte lock free. A peer marks its slot attached before it takes its role's lock, so one
//   killed while attaching is seen dead too, and one still attaching (slot locked) is not. A
//   new peer of the same role reaps dead slots when it attaches, so waits go back to normal.
// - A waiter dies asleep: its announcement stays up, and every publisher on the other side would
//   pay a futex wake-up for it forever. The consumer's is one word, cleared by the next consumer
//   (the end is exclusive). Producers announce themselves by slot, one bit each
//   (producers_waiting, producers_async, lock_sleepers): whoever can take a bit's slot lock
//   knows its owner dead and clears the bit — the next producer to attach, the next consumer,
//   and a publisher about to wake someone (at most once per liveness slice).
//
// LEAVING. A handle that detaches cleanly (close(), the destructor) frees its slot, gives its
// role's byte lock back, and only then bumps its role's count of changes (producer_changes,
// consumer_changes; a release RMW), and wakes the other side as a publisher does. A handle
// that attaches bumps the same count once it holds its role's lock. A waiter asks peer_gone()
// why it should stop waiting: no live holder of the other role's lock, and a slot of that
// role attached with its lock free, is peer_dead; nobody of that role attached at all, with
// its count nonzero, is peer_closed ("it came, and all of it left cleanly"); a count of zero
// is a peer that never came, and a slot attached with its lock held one still attaching: keep
// waiting. The order makes the count a promise: a waiter that reads the new count (acquire)
// sees the slot free and the lock gone, and everything the leaver committed before. So a
// consumer that hears "gone" looks at the ring once more and says peer_closed only if it is
// empty. The syscalls are paid once per liveness slice, or at once when the count moved (the
// leaver's wake-up finds the waiter with a new count); in between the last answer stands,
// since only a death changes it without moving the count, and deaths are the slice's to find.
// In mpsc one producer leaving while others stay changes nothing for the consumer; the last
// one out makes it peer_closed. A new handle of that role ends it, and the queue goes on.
//
// MEMORY ORDERING AND THE FUTEX. A waiter sleeps on a futex word (data_seq for the consumer,
// space_seq for producers) after announcing itself in a waiting word (consumer_waiting,
// producers_waiting). The publisher (commit, or release on the other side) must not miss the
// announcement, and the waiter must not miss the publication:
//
//     waiter:    W(waiting = 1); [B1]; loop { seq = S; R(published?) -> if no: futex_wait(S, seq) }
//     publisher: W(published);   [B2]; R(waiting) -> if set: S += 1 (RMW); futex_wake(S)
//
// This is the store-buffer (Dekker) pattern: without barriers x86 may let each side's load
// pass its own earlier store (StoreLoad), both read the old values, and the waiter sleeps
// through a publication. With B1 and B2 full barriers at least one side sees the other's
// store. If the publisher saw `waiting` = 0, its W(published) is visible to every R(published)
// the waiter makes after B1. If it saw 1, it bumps S after publishing; a waiter whose
// `seq = S` read that bump (acquire, from the RMW) also sees the publication, and one that
// read an older S hands that older value to futex_wait, which returns at once if the bump has
// happened, or is already queued when futex_wake runs (the kernel compares the word under the
// bucket lock futex_wake takes). No lost wake-up. The flag stays up for the whole wait, so B1
// is needed once per wait, not once per wake-up.
//
// B2 is on the hot path (every commit, every release), and a full fence there costs a drain
// of the store buffer, which on a ring means waiting for the cache lines the other core holds.
// So bus makes the barrier asymmetric when the kernel allows it (Sync::membarrier): B2 is only
// a compiler barrier, and B1 is membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED), which makes every
// running thread of every registered process execute a full barrier before it returns. For
// the publisher's thread, that barrier falls at some point P of its execution: if its
// R(waiting) comes after P, it sees W(waiting) (ordered before the membarrier call); if it
// comes before P, its earlier W(published) is also before P, hence visible to the waiter's
// R(published), which follows the membarrier. Either way one side sees the other. A thread
// that is not running passes a full barrier at the context switch. Only a process about to
// sleep pays the syscall (0.2-2 µs here), once per wait. Every process attached to a
// membarrier-mode queue must have registered (open() refuses otherwise); a queue created by a
// process that could not register is a fence-mode queue for everyone.
//
// Sleeps are bounded by a slice (liveness_slice) even when the caller waits forever: after a
// slice the waiter re-checks the ring and the other side's liveness. So a peer that dies
// never leaves a waiter hanging, and any wake-up lost to a bug would cost a slice, not a hang.
//
// ASYNC. async_wait() arms the same waiting words with a second bit (consumer) or the slot's
// bit in a second mask (producers) and a token naming an abstract-namespace datagram socket the
// waiter has bound; the publisher that sees it sends one byte there. The socket is what the Asio
// loop watches; a timer at the slice does the liveness checks. A stray datagram (anyone in the
// network namespace can send one) only causes a re-check.
//
// WHERE. This file: the ring, i.e. reserve/commit and front/release beyond their inline fast
// paths (bus/include/bus/shm_queue.hpp, bus/detail/shm_hot.hpp), and the Queue calls.
// reservation_lock.cpp: the mpsc reservation lock, and taking it over from one producer.
// waits.cpp: spinning, the futex and async waits, and waking. attach.cpp: create/open,
// attach/detach, telling that a peer died and taking back what it left. The handle's state,
// Queue::Impl, is in queue_impl.hpp.
#include "bus/shm_queue.hpp"

#include "shm/layout.hpp"
#include "shm/queue_impl.hpp"
#include "shm/segment.hpp"

#include <google/protobuf/message_lite.h>

#include <cstring>
#include <stdexcept>
#include <utility>

namespace bus::shm {

namespace asio = boost::asio;
using namespace detail;
using namespace std::chrono_literals;

namespace {

// How long the consumer waits on one claimed record before asking whether its producer lives.
constexpr std::chrono::nanoseconds stuck_limit = 10ms;

// Queue::fall_behind(): pauses between its looks at tail, and how many looks at most.
constexpr unsigned trail_pauses = 4;
constexpr unsigned trail_looks = 32;

} // namespace

// --- producer -------------------------------------------------------------------------------

[[gnu::noinline]] Result<std::span<std::byte>> Queue::Impl::try_reserve_slow(std::size_t n) {
    require(Role::producer, "reserve");
    if (reservation.active)
        throw std::logic_error("bus::shm::Queue::reserve: the previous reservation is still open");
    if (n > max_record())
        return errc::record_too_large;
    const std::uint32_t need = extent_for(n);
    if (mode == Mode::spsc) {
        if (tail + need - head_cache > capacity) {
            head_cache = ctrl->head.load(std::memory_order_acquire);
            if (tail + need - head_cache > capacity)
                return errc::full;
        }
        reservation = {true, tail, need, n};
        return std::span<std::byte>(payload_at(tail), n);
    }
    if (exclusive) {
        // The lock is ours across records unless another producer took it over.
        if (enter_exclusive()) {
            if (tail + need - head_cache > capacity) {
                head_cache = ctrl->head.load(std::memory_order_acquire);
                if (tail + need - head_cache > capacity) {
                    if (leave_exclusive())
                        wake_stealer();
                    return errc::full;
                }
            }
            reservation = {true, tail, need, n};
            return std::span<std::byte>(payload_at(tail), n);
        }
        // Taken over: its new owner may be waiting for us to say we are not reserving.
        leave_exclusive();
        wake_stealer();
        exclusive = false;
    }
    lock_reserve();
    if (sync == Sync::membarrier &&
        ctrl->producers_present.load(std::memory_order_relaxed) == my_bit()) {
        // The only producer: keep the lock across records, and reserve as spsc does.
        ctrl->reserve_lock.store(biased_id, std::memory_order_relaxed);
        if (ctrl->lock_sleepers.load(std::memory_order_relaxed) != 0)
            wake_lock_sleepers(); // they may take it over now
        exclusive = true;
        tail = ctrl->tail.load(std::memory_order_relaxed);
        produced = ctrl->produced.load(std::memory_order_relaxed);
        return try_reserve_slow(n);
    }
    if ((++reservations & 1023) == 0 && reap_due())
        reap_dead_waiters(); // a dead producer's bit in producers_present keeps the bias off
    const std::uint64_t t = ctrl->tail.load(std::memory_order_relaxed);
    if (t + need - head_cache > capacity) {
        head_cache = ctrl->head.load(std::memory_order_acquire);
        if (t + need - head_cache > capacity) {
            unlock_reserve();
            return errc::full;
        }
    }
    header_at(t)->control.store(pack_record(need, RecordState::claimed, slot, generation),
                                std::memory_order_relaxed);
    ctrl->produced.store(ctrl->produced.load(std::memory_order_relaxed) + 1,
                         std::memory_order_relaxed);
    // A claim moves tail past the record the `last` word may name, so it takes the name back
    // first: take_lone() trusts a name only while tail ends at that record.
    ctrl->last.store(no_record, std::memory_order_relaxed);
    ctrl->tail.store(t + need, std::memory_order_release); // publishes the claim
    unlock_reserve();
    reservation = {true, t, need, n};
    return std::span<std::byte>(payload_at(t), n);
}

bool Queue::Impl::has_room(std::size_t n) noexcept {
    const std::uint64_t t = exclusive ? tail : ctrl->tail.load(std::memory_order_relaxed);
    head_cache = ctrl->head.load(std::memory_order_acquire);
    return t + extent_for(n) - head_cache <= capacity;
}

[[gnu::noinline]] void Queue::Impl::commit_slow(std::size_t used) {
    require(Role::producer, "commit");
    if (!reservation.active)
        throw std::logic_error("bus::shm::Queue::commit without a reservation");
    if (used > reservation.size)
        throw std::logic_error("bus::shm::Queue::commit: more bytes than were reserved");
    RecordHeader* h = header_at(reservation.pos);
    reservation.active = false;
    if (exclusive) {
        commit_exclusive(h, static_cast<std::uint32_t>(used));
        if (mode == Mode::mpsc && leave_exclusive())
            wake_stealer();
    } else {
        h->length = static_cast<std::uint32_t>(used);
        h->control.store(committed_tag | reservation.extent, std::memory_order_release);
    }
    notify_consumer();
}

void Queue::Impl::abort() noexcept {
    if (!reservation.active)
        return;
    reservation.active = false;
    if (exclusive) {
        // tail never moved: the bytes are simply reused
        if (mode == Mode::mpsc && leave_exclusive())
            wake_stealer();
        return;
    }
    // The claim is in the ring and blocks the consumer: turn it into a record to step over.
    header_at(reservation.pos)
        ->control.store(pack_record(reservation.extent, RecordState::aborted, slot, generation),
                        std::memory_order_release);
    notify_consumer();
}

// --- consumer -------------------------------------------------------------------------------

[[gnu::noinline]] Result<std::span<const std::byte>> Queue::Impl::try_front_slow() {
    require(Role::consumer, "front");
    if (taken.active)
        return std::span<const std::byte>(payload_at(taken.pos), taken.length);
    for (;;) {
        if (head == tail_cache) {
            tail_cache = ctrl->tail.load(std::memory_order_acquire);
            if (head == tail_cache)
                return errc::empty;
        }
        // tail is a peer's writing too: more than a ring ahead of head is no ring at all, and
        // stepping over aborted records up to it would never end.
        if (tail_cache - head > capacity)
            return errc::bad_record;
        RecordHeader* h = header_at(head);
        std::uint64_t c = h->control.load(std::memory_order_acquire);
        const std::uint32_t extent = record_extent(c);
        // The header is a peer's writing: bound everything before using it.
        if (extent == 0 || extent % record_align != 0 || extent > tail_cache - head ||
            extent > capacity)
            return errc::bad_record;
        switch (record_state(c)) {
        case RecordState::committed: {
            const std::uint32_t length = h->length;
            if (length > extent)
                return errc::bad_record;
            taken = {true, head, extent, length};
            return std::span<const std::byte>(payload_at(head), length);
        }
        case RecordState::aborted:
            advance(extent, false);
            continue;
        case RecordState::claimed: {
            if (mode == Mode::spsc)
                return errc::bad_record;
            // Being written (the common case: tail moves at reserve), or its producer died
            // doing so. Telling them apart costs a clock read and then a syscall, which a
            // consumer polling a busy ring must not pay on every look: pollers look at the
            // clock every 4096 looks, the waits once per liveness slice (check_claims). Dead
            // means the claimer's lock is free: pollers ask once stuck on the same record for
            // stuck_limit, the waits at once (they are about to ask whether the producers are
            // all dead, and must not say peer_dead with a dead claim left unskipped).
            saw_claim = true;
            if (stuck_pos != head) {
                stuck_pos = head;
                stuck_polls = 0;
                stuck_since = {};
            }
            if (!check_claims && (++stuck_polls & 4095) != 0)
                return errc::empty;
            const auto now = Clock::now();
            if (!check_claims) {
                if (stuck_since == Clock::time_point{}) {
                    stuck_since = now;
                    return errc::empty;
                }
                if (now - stuck_since < stuck_limit)
                    return errc::empty;
            }
            stuck_since = now;
            if (!claimer_dead(c))
                return errc::empty;
            // Dead. It may have committed just before dying: read the header once more.
            c = h->control.load(std::memory_order_acquire);
            if (record_state(c) != RecordState::claimed)
                continue;
            advance(extent, true);
            continue;
        }
        default:
            return errc::bad_record;
        }
    }
}

[[gnu::always_inline]] inline void Queue::Impl::advance(std::uint32_t extent, bool skip) noexcept {
    head += extent;
    ctrl->head.store(head, std::memory_order_release);
    ctrl->consumed.store(++consumed, std::memory_order_relaxed);
    if (skip)
        ctrl->skipped.store(++skipped, std::memory_order_relaxed);
    notify_producers();
}

[[gnu::always_inline]] inline void Queue::Impl::release() {
    if (role != Role::consumer || !taken.active) [[unlikely]] {
        require(Role::consumer, "release");
        throw std::logic_error("bus::shm::Queue::release without a record from front()");
    }
    taken.active = false;
    advance(taken.extent, false);
}

// --- Queue: forwarding ----------------------------------------------------------------------

Queue::Queue(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)), hot_(impl_.get()) {}
Queue::Queue(Queue&& other) noexcept
    : impl_(std::move(other.impl_)), hot_(std::exchange(other.hot_, nullptr)) {}
Queue& Queue::operator=(Queue&& other) noexcept {
    if (this != &other) {
        impl_ = std::move(other.impl_);
        hot_ = std::exchange(other.hot_, nullptr);
    }
    return *this;
}
Queue::~Queue() = default;

// The out-of-line halves of the inline calls in shm_queue.hpp.
Result<std::span<std::byte>> Queue::try_reserve_slow(std::size_t n) {
    return impl_->try_reserve_slow(n);
}
Result<std::span<std::byte>> Queue::reserve_wait(std::size_t n, std::chrono::nanoseconds timeout) {
    return impl_->reserve_wait(n, timeout);
}
void Queue::commit_slow(std::size_t used) {
    impl_->commit_slow(used);
}
// try_front() found the consumer close behind a streaming producer (detail::consumer_trail).
// Waits, while tail keeps moving, until that much is published behind the head, for at most
// trail_looks looks: a producer that stops is not waited for, and a record is held for at most
// trail_looks * trail_pauses pauses (a few microseconds where a pause is ~40 ns; not measured).
void Queue::fall_behind() noexcept {
    detail::Hot& h = *hot_;
    for (unsigned look = 0; look < trail_looks; ++look) {
        for (unsigned i = 0; i < trail_pauses; ++i)
            cpu_relax();
        const std::uint64_t tail = h.tail_word->load(std::memory_order_acquire);
        if (tail == h.tail_cache)
            return;
        h.tail_cache = tail;
        if (tail - h.head >= h.trail)
            return;
    }
}

Result<std::span<const std::byte>> Queue::try_front_slow() {
    return impl_->try_front_slow();
}
Result<std::span<const std::byte>> Queue::front_wait(std::chrono::nanoseconds timeout) {
    return impl_->front_wait(timeout);
}
void Queue::release_slow() {
    impl_->release();
}
void Queue::wake_consumer() noexcept {
    impl_->wake_consumer();
}
void Queue::wake_producers() noexcept {
    impl_->wake_producers();
}
void Queue::wake_stealer() noexcept {
    impl_->wake_stealer();
}

void Queue::abort() {
    impl_->require(Role::producer, "abort");
    impl_->abort();
}

std::error_code Queue::try_push(std::span<const std::byte> record) {
    auto slot = try_reserve(record.size());
    if (!slot)
        return slot.error();
    std::memcpy(slot.value().data(), record.data(), record.size());
    commit(record.size());
    return {};
}

std::error_code Queue::push(std::span<const std::byte> record, std::chrono::nanoseconds timeout) {
    auto slot = reserve(record.size(), timeout);
    if (!slot)
        return slot.error();
    std::memcpy(slot.value().data(), record.data(), record.size());
    commit(record.size());
    return {};
}

namespace {
void serialize_into(const google::protobuf::MessageLite& message, std::span<std::byte> slot) {
    // ByteSizeLong() cached the sizes; this writes straight into the ring.
    message.SerializeWithCachedSizesToArray(reinterpret_cast<std::uint8_t*>(slot.data()));
}
} // namespace

std::error_code Queue::try_push(const google::protobuf::MessageLite& message) {
    auto slot = try_reserve(message.ByteSizeLong());
    if (!slot)
        return slot.error();
    serialize_into(message, slot.value());
    commit(slot.value().size());
    return {};
}

std::error_code Queue::push(const google::protobuf::MessageLite& message,
                            std::chrono::nanoseconds timeout) {
    auto slot = reserve(message.ByteSizeLong(), timeout);
    if (!slot)
        return slot.error();
    serialize_into(message, slot.value());
    commit(slot.value().size());
    return {};
}

namespace {
std::error_code parse_and_release(Queue::Impl& q, Result<std::span<const std::byte>> record,
                                  google::protobuf::MessageLite& out) {
    if (!record)
        return record.error();
    const bool ok =
        out.ParseFromArray(record.value().data(), static_cast<int>(record.value().size()));
    q.release();
    return ok ? std::error_code{} : make_error_code(errc::wrong_type);
}
} // namespace

std::error_code Queue::try_pop(google::protobuf::MessageLite& out) {
    return parse_and_release(*impl_, try_front(), out);
}
std::error_code Queue::pop(google::protobuf::MessageLite& out, std::chrono::nanoseconds timeout) {
    return parse_and_release(*impl_, front(timeout), out);
}

void Queue::start_wait(asio::io_context& io, std::size_t record_size,
                       std::chrono::nanoseconds timeout,
                       std::unique_ptr<detail::WaitCompletion> completion) {
    if (!impl_) {
        // Closed or moved from: as Asio's own I/O objects answer for a closed descriptor.
        completion->post(std::make_error_code(std::errc::bad_file_descriptor));
        return;
    }
    impl_->async_wait(io, record_size, timeout, std::move(completion));
}
void Queue::cancel() {
    if (impl_)
        impl_->cancel();
}
void Queue::close() noexcept {
    impl_.reset();
    hot_ = nullptr;
}
void Queue::set_spin(std::chrono::nanoseconds spin) noexcept {
    impl_->spin = spin;
}

const std::string& Queue::name() const noexcept {
    return impl_->name;
}
Mode Queue::mode() const noexcept {
    return impl_->mode;
}
Role Queue::role() const noexcept {
    return impl_->role;
}
std::size_t Queue::capacity() const noexcept {
    return impl_->capacity;
}
std::size_t Queue::max_record() const noexcept {
    return impl_->max_record();
}
bool Queue::peer_alive() const noexcept {
    return impl_->other_side_alive();
}

Stats Queue::stats() const noexcept {
    return read_stats(*impl_->ctrl);
}

} // namespace bus::shm
