// bus::shm::Queue: a named queue of variable-size records in shared memory, between unrelated
// processes on one host: the fastest path bus has (DESIGN.md, "Shared memory").
//
//     auto q = bus::shm::Queue::create("orders", 1 << 20).value();     // the producer's end
//     q.push(order);                                                   // protobuf, in place
//
//     auto c = bus::shm::Queue::open("orders", bus::shm::Role::consumer).value();
//     auto order = c.pop<Order>(std::chrono::seconds(1));              // or front()/release()
//
// - Records are written in place: reserve(n) gives the bytes of the slot, commit() publishes
//   them; front() gives the next record in place and release() frees it. push()/pop() are the
//   typed conveniences (a protobuf message serializes straight into the slot).
// - Modes: one producer and one consumer (spsc), or many producers and one consumer (mpsc).
//   The consumer end is exclusive in both; a second one gets errc::queue_in_use. An mpsc
//   producer that is the only one attached reserves as fast as spsc; one that attaches next
//   waits, at its first reserve(), for the first one's open reservation to be committed.
// - Never overwrites: try_ calls fail with errc::full / errc::empty; the others wait, spinning
//   briefly and then sleeping in the kernel (a futex in the segment), until their timeout
//   (errc::timeout). async_wait() does the same waiting on an Asio loop.
// - Peers are known to the kernel (a lock each process holds on the segment), so a waiter wakes
//   with errc::peer_dead when the other side has died and nobody live has taken its place. A
//   producer that died half-way through a record in mpsc mode is skipped and counted; records
//   already committed survive their producer, and records a consumer had not released are
//   delivered to the next consumer.
// - A waiter wakes with errc::peer_closed when the other side left cleanly (its handles were
//   closed or destroyed, the process exiting normally included) and nobody of it is attached:
//   a consumer only once it has read every record (the ring is empty), in mpsc only when every
//   producer has left (one that died instead makes it peer_dead); a producer waiting for room
//   when the consumer left (its records stay for the next consumer). Within a wake-up: the
//   leaving handle wakes the waiter. It is not final: a producer (or consumer) that opens the
//   queue later continues it where it stood, and waits wait for it again. Until one comes,
//   waits say peer_closed at once (peer_alive() tells when one has). Polling calls (try_*)
//   never say it. A process that ends without destroying its handle (_exit, a signal, exit()
//   with the handle on a stack frame) did not leave cleanly: peer_dead.
// - open() checks the segment's version and layout; a queue made by another build is refused
//   with errc::layout_mismatch. Segments are mode 0600 unless group access is asked for.
// - Lifetime: the segment outlives its processes while it holds records. The last handle to
//   close an empty queue removes it; create() replaces a segment of the same name that no live
//   process holds; list() and remove() find and delete stale ones.
//
// Threading: a Queue handle is used by one thread at a time. Several producers in one process
// each open their own handle.
#pragma once

#include "bus/detail/shm_hot.hpp"
#include "bus/error.hpp"

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sys/types.h>

namespace google::protobuf {
class MessageLite;
}

namespace bus::shm {

enum class Mode : std::uint8_t {
    spsc = 1, // one producer, one consumer
    mpsc = 2, // many producers, one consumer
};

enum class Role : std::uint8_t {
    producer = 1,
    consumer = 2,
};

// A timeout that never expires.
inline constexpr std::chrono::nanoseconds forever = std::chrono::nanoseconds::max();

struct CreateOptions {
    Mode mode = Mode::spsc;
    // The end the creating handle holds.
    Role role = Role::producer;
    // 0660 instead of 0600: processes of the owner's group may open the queue.
    bool group_access = false;
};

struct Stats {
    std::size_t capacity = 0;            // bytes of the ring
    std::uint64_t depth_bytes = 0;       // bytes between the consumer and the producers
    std::uint64_t depth_records = 0;     // records in the ring (approximate after a crash)
    std::uint64_t produced = 0;          // records that entered the ring (mpsc: at reserve)
    std::uint64_t consumed = 0;          // records the consumer moved past (released or skipped)
    std::uint64_t skipped = 0;           // records left half-written by a producer that died
    std::uint32_t waiting_producers = 0; // producers asleep waiting for room
};

namespace detail {

// A pending async_wait()'s completion handler, whatever its type (Asio 1.74 has no
// any_completion_handler), so the waiting itself is compiled once, in the library.
class WaitCompletion {
public:
    virtual ~WaitCompletion() = default;
    // Posts the handler, called with `ec`, to the handler's own executor. Once.
    virtual void post(std::error_code ec) = 0;
};

template <class Handler, class IoExecutor>
class WaitCompletionFor final : public WaitCompletion {
public:
    WaitCompletionFor(Handler handler, const IoExecutor& io)
        : handler_(std::move(handler)), work_(boost::asio::get_associated_executor(handler_, io)) {}
    void post(std::error_code ec) override {
        // The work guard travels with the handler: its executor has work until it has run.
        auto executor = work_.get_executor();
        boost::asio::post(executor, [handler = std::move(handler_), work = std::move(work_),
                                     ec]() mutable { std::move(handler)(ec); });
    }

private:
    Handler handler_;
    boost::asio::executor_work_guard<boost::asio::associated_executor_t<Handler, IoExecutor>> work_;
};

} // namespace detail

class Queue {
public:
    // Creates the queue `name` ([A-Za-z0-9._-], at most 200 characters) with a ring of at least
    // `capacity` bytes (rounded up to a power of two, at least a page, at most 1 GiB).
    // std::errc::file_exists when a live process holds a queue of that name; a segment of that
    // name that no live process holds is removed first.
    static Result<Queue> create(std::string_view name, std::size_t capacity,
                                CreateOptions options = {});
    // Opens an existing queue as `role`. errc::layout_mismatch for a segment of another format;
    // errc::queue_in_use when that end is exclusive and held (the consumer; the producer of an
    // spsc queue).
    static Result<Queue> open(std::string_view name, Role role);

    Queue(Queue&&) noexcept;
    Queue& operator=(Queue&&) noexcept;
    Queue(const Queue&) = delete;
    Queue& operator=(const Queue&) = delete;
    // Detaches: an open reservation is abandoned, a record taken with front() and not released
    // stays for the next consumer. The last handle on an empty queue removes its segment.
    ~Queue();

    // --- producer ---------------------------------------------------------------------------

    // Room for one record of exactly `n` bytes, valid until commit() or abort().
    // errc::full (try_) or waits; errc::record_too_large if n > max_record().
    Result<std::span<std::byte>> try_reserve(std::size_t n);
    Result<std::span<std::byte>> reserve(std::size_t n, std::chrono::nanoseconds timeout = forever);
    // Publishes the reserved record, or its first `used` bytes.
    void commit() { commit(hot_->reservation.size); }
    void commit(std::size_t used);
    // Gives the reservation up: the consumer never sees it.
    void abort();

    std::error_code try_push(std::span<const std::byte> record);
    std::error_code push(std::span<const std::byte> record,
                         std::chrono::nanoseconds timeout = forever);
    std::error_code try_push(const google::protobuf::MessageLite& message);
    std::error_code push(const google::protobuf::MessageLite& message,
                         std::chrono::nanoseconds timeout = forever);

    // --- consumer ---------------------------------------------------------------------------

    // The next record, in place, valid until release(). Calling again before release() returns
    // the same record. errc::empty (try_) or waits.
    Result<std::span<const std::byte>> try_front();
    Result<std::span<const std::byte>> front(std::chrono::nanoseconds timeout = forever);
    // Frees the record front() returned; the producers may reuse its bytes.
    void release();

    // Parses the next record into `out` and releases it. A record that does not parse as
    // `out`'s type is released too, and errc::wrong_type returned (use front() to look first).
    std::error_code try_pop(google::protobuf::MessageLite& out);
    std::error_code pop(google::protobuf::MessageLite& out,
                        std::chrono::nanoseconds timeout = forever);
    template <class T>
    Result<T> try_pop() {
        T out;
        if (auto ec = try_pop(static_cast<google::protobuf::MessageLite&>(out)))
            return ec;
        return out;
    }
    template <class T>
    Result<T> pop(std::chrono::nanoseconds timeout = forever) {
        T out;
        if (auto ec = pop(static_cast<google::protobuf::MessageLite&>(out), timeout))
            return ec;
        return out;
    }

    // --- waiting ----------------------------------------------------------------------------

    // Completes, with a std::error_code, once a record can be read (consumer) or a record of
    // `record_size` bytes can be reserved (producer): {} then, and front()/reserve() will not
    // wait. Or with what the blocking calls say: errc::timeout after `timeout` (`forever`
    // never expires), errc::peer_dead, errc::peer_closed (a consumer: only with the ring
    // empty); and with std::errc::operation_canceled after cancel() or when the queue is
    // closed or destroyed, std::errc::bad_file_descriptor on a closed or moved-from queue.
    // Any Asio completion token: a callback, use_awaitable (co_await yields the error_code),
    // use_future. The handler runs on its associated executor (by default `io`'s), never
    // inside this call. One wait at a time (std::logic_error otherwise); no spinning. The
    // queue keeps a socket registered with `io` from the first call on: as for any Asio I/O
    // object, `io` must outlive the queue, and every call uses the same `io`.
    template <class Token>
    auto async_wait(boost::asio::io_context& io, std::chrono::nanoseconds timeout, Token&& token) {
        return async_wait(io, 0, timeout, std::forward<Token>(token));
    }
    template <class Token>
    auto async_wait(boost::asio::io_context& io, std::size_t record_size,
                    std::chrono::nanoseconds timeout, Token&& token) {
        // The arguments are the initiation's own (copied or moved in, nothing by reference),
        // so a deferred start (use_awaitable starts at co_await) still has them.
        return boost::asio::async_initiate<Token, void(std::error_code)>(
            [](auto handler, Queue* self, boost::asio::io_context* context, std::size_t size,
               std::chrono::nanoseconds wait) {
                using Handler = decltype(handler);
                using Executor = boost::asio::io_context::executor_type;
                self->start_wait(*context, size, wait,
                                 std::make_unique<detail::WaitCompletionFor<Handler, Executor>>(
                                     std::move(handler), context->get_executor()));
            },
            token, this, &io, record_size, timeout);
    }
    void cancel();

    // Detaches now, as the destructor does: the other side, once nobody of this end is left,
    // hears errc::peer_closed. The handle is then empty, as a moved-from one is: only
    // is_open(), close(), cancel(), async_wait() (bad_file_descriptor), assignment and
    // destruction may be called on it.
    void close() noexcept;
    bool is_open() const noexcept { return impl_ != nullptr; }

    // How long blocking calls spin before sleeping in the kernel (default 20 µs). Zero sleeps
    // at once; `forever` never sleeps.
    void set_spin(std::chrono::nanoseconds spin) noexcept;

    // --- state ------------------------------------------------------------------------------

    const std::string& name() const noexcept;
    Mode mode() const noexcept;
    Role role() const noexcept;
    std::size_t capacity() const noexcept;
    // The largest record the ring can hold (capacity() minus a record header).
    std::size_t max_record() const noexcept;
    Stats stats() const noexcept;
    // Whether a live process holds the other end (a consumer, or any producer).
    bool peer_alive() const noexcept;

    struct Impl;

private:
    explicit Queue(std::unique_ptr<Impl> impl) noexcept;

    void start_wait(boost::asio::io_context& io, std::size_t record_size,
                    std::chrono::nanoseconds timeout,
                    std::unique_ptr<detail::WaitCompletion> completion);

    // Out of line: everything but the common case of the inline calls below.
    Result<std::span<std::byte>> try_reserve_slow(std::size_t n);
    Result<std::span<std::byte>> reserve_wait(std::size_t n, std::chrono::nanoseconds timeout);
    void commit_slow(std::size_t used);
    Result<std::span<const std::byte>> try_front_slow();
    Result<std::span<const std::byte>> front_wait(std::chrono::nanoseconds timeout);
    void fall_behind() noexcept;
    void release_slow();
    void wake_consumer() noexcept;
    void wake_producers() noexcept;
    void wake_stealer() noexcept;

    std::unique_ptr<Impl> impl_;
    detail::Hot* hot_ = nullptr; // the part of *impl_ the inline calls use
};

// --- the inline fast paths (the protocol: bus/src/shm/queue.cpp) ------------------------------

inline Result<std::span<std::byte>> Queue::try_reserve(std::size_t n) {
    detail::Hot& h = *hot_;
    if (h.exclusive && !h.reservation.active && n <= h.capacity) [[likely]] {
        const std::uint32_t need = detail::extent_for(n);
        if (h.tail + need - h.head_cache > h.capacity) [[unlikely]] {
            h.head_cache = h.head_word->load(std::memory_order_acquire);
            if (h.tail + need - h.head_cache > h.capacity && h.mode == Mode::spsc)
                return errc::full;
        }
        // mpsc: the slow path when full or when the lock was taken over (it says which)
        if (h.mode == Mode::spsc ||
            (h.tail + need - h.head_cache <= h.capacity && h.enter_exclusive())) [[likely]] {
            h.reservation = {true, h.tail, need, n};
            h.prefetch_for_write(need);
            return std::span<std::byte>(h.payload_at(h.tail), n);
        }
    }
    return try_reserve_slow(n);
}

inline Result<std::span<std::byte>> Queue::reserve(std::size_t n,
                                                   std::chrono::nanoseconds timeout) {
    // One named result, built in the caller's return slot: a copy of the Result per record
    // measurably slows the producer, and a producer slower than its consumer drags an spsc
    // ring into lockstep (bench/RESULTS.md).
    Result<std::span<std::byte>> r = try_reserve(n);
    if (!r && r.error() == errc::full) [[unlikely]]
        r = reserve_wait(n, timeout);
    return r;
}

inline void Queue::commit(std::size_t used) {
    detail::Hot& h = *hot_;
    if (h.reservation.active && used <= h.reservation.size) [[likely]] {
        detail::RecordHeader* header = h.header_at(h.reservation.pos);
        h.reservation.active = false;
        if (h.exclusive) {
            h.commit_exclusive(header, static_cast<std::uint32_t>(used));
            if (h.mode == Mode::mpsc && h.leave_exclusive()) [[unlikely]]
                wake_stealer();
        } else {
            // mpsc: tail moved at reserve(); the header's state publishes.
            header->length = static_cast<std::uint32_t>(used);
            header->control.store(h.committed_tag | h.reservation.extent,
                                  std::memory_order_release);
        }
        h.publish_barrier();
        if (h.consumer_waiting->load(std::memory_order_relaxed) != 0) [[unlikely]]
            wake_consumer();
        return;
    }
    commit_slow(used);
}

inline Result<std::span<const std::byte>> Queue::try_front() {
    detail::Hot& h = *hot_;
    if (h.role == Role::consumer && !h.taken.active) [[likely]] {
        if (h.head == h.tail_cache) {
            h.tail_cache = h.tail_word->load(std::memory_order_acquire);
            if (h.head == h.tail_cache)
                return errc::empty;
            // A record just arrived, in lines the producer still holds: ask for its payload's
            // line now, so its transfer overlaps the header's rather than following it.
            __builtin_prefetch(h.payload_at(h.head));
            if (h.take_lone())
                return std::span<const std::byte>(h.payload_at(h.head), h.taken.length);
        }
        const detail::RecordHeader* header = h.header_at(h.head);
        const std::uint64_t c = header->control.load(std::memory_order_acquire);
        const std::uint32_t length = header->length;
        // The header is a peer's writing: bound it before use (the slow path says what is wrong).
        if (h.readable(c, length, h.tail_cache - h.head)) [[likely]] {
            const std::uint32_t extent = detail::record_extent(c);
            // Bytes published after this record: some, but not many, and the producer is
            // streaming just ahead (a round trip's record is alone).
            const std::uint64_t after = h.tail_cache - h.head - extent;
            if (after != 0 && after < h.trail) [[unlikely]]
                fall_behind();
            h.taken = {true, h.head, extent, length};
            return std::span<const std::byte>(h.payload_at(h.head), length);
        }
    }
    return try_front_slow();
}

inline Result<std::span<const std::byte>> Queue::front(std::chrono::nanoseconds timeout) {
    Result<std::span<const std::byte>> r = try_front(); // as reserve(): built in place
    if (!r && r.error() == errc::empty) [[unlikely]]
        r = front_wait(timeout);
    return r;
}

inline void Queue::release() {
    detail::Hot& h = *hot_;
    if (h.role == Role::consumer && h.taken.active) [[likely]] {
        h.taken.active = false;
        h.head += h.taken.extent;
        h.head_word->store(h.head, std::memory_order_release);
        h.consumed_word->store(++h.consumed, std::memory_order_relaxed);
        h.publish_barrier();
        if (h.producers_waiting->load(std::memory_order_relaxed) != 0) [[unlikely]]
            wake_producers();
        return;
    }
    release_slow();
}

// What `bus shm ls` shows about one queue.
struct QueueInfo {
    std::string name;
    std::error_code error; // the segment could not be read (permissions, layout): rest is empty
    Mode mode = Mode::spsc;
    Stats stats;
    pid_t owner_pid = 0;              // the process that created it
    bool owner_alive = false;         // that process (same pid and start time) still runs
    bool in_use = false;              // some live process has it open
    int producers = 0;                // live producer handles
    bool consumer = false;            // a live consumer handle
    std::vector<pid_t> producer_pids; // the processes of those handles (one per handle)
    pid_t consumer_pid = 0;
    uid_t uid = 0;          // owner of the segment
    mode_t permissions = 0; // its mode bits
};

// A queue name: [A-Za-z0-9._-], 1 to 200 characters.
bool valid_name(std::string_view name) noexcept;

// Every bus queue on this host the caller can see (segments named bus.* in /dev/shm).
Result<std::vector<QueueInfo>> list();
// One queue; std::errc::no_such_file_or_directory if there is none.
Result<QueueInfo> inspect(std::string_view name);
// Removes the queue's name (processes that have it open keep their mapping). Refuses with
// errc::queue_in_use while a live process holds it, unless `force`.
std::error_code remove(std::string_view name, bool force = false);

// The error `ec` that create(), open() or remove() returned for queue `name`, told for a
// person: the queue, what went wrong and, when the queue exists or is held
// (std::errc::file_exists, errc::queue_in_use), which processes hold it, read from the segment
// now. Errors stay std::error_code values for programs to compare; this is what to print:
//
//     queue 'orders': that end of the queue is held by another live process (consumer: pid
//     4242; producers: pids 4240, 4241; created by pid 4240)
std::string describe_error(std::string_view name, std::error_code ec);

} // namespace bus::shm
