// Sleeping and waking. A blocking wait spins briefly, then announces itself in a waiting word
// and sleeps on a futex word of the segment (front_wait(), reserve_wait()); an async wait
// announces itself and has its Asio loop watch a datagram socket (async_wait()). A publisher
// that sees an announcement wakes the waiter (wake_consumer(), wake_producers()). Why no
// wake-up is lost, and why the barriers are asymmetric: "Memory ordering and the futex" and
// "Async" in queue.cpp.
//
// Invariants kept here:
// - A waiter's announcement is up, and its barrier (heavy_barrier()) passed, before its last
//   look at the ring before it sleeps; the announcement stays up for the whole wait.
// - No sleep is longer than a liveness slice: after each, the waiter looks at the ring again
//   and asks whether the other side died, so neither a lost wake-up nor a dead peer hangs it.
// - A producer's bit in producers_waiting stays up while either of its waits (sync or async)
//   is on: each wait takes down only what is its own.
#include "shm/queue_impl.hpp"

#include "shm/layout.hpp"
#include "shm/segment.hpp"

#include "bus/unique_fd.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <utility>

#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>

namespace bus::shm {

namespace asio = boost::asio;
using namespace detail;
using namespace std::chrono_literals;

namespace {

bool is_empty(const std::error_code& ec) {
    return ec == errc::empty;
}
bool is_full(const std::error_code& ec) {
    return ec == errc::full;
}

// The abstract socket address an async waiter binds (and publishers send to).
socklen_t notify_address(std::uint64_t token, sockaddr_un& addr) {
    std::memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    const int n = std::snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "bus.shm.%016llx",
                                static_cast<unsigned long long>(token));
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + static_cast<size_t>(n));
}

} // namespace

// --- async state ----------------------------------------------------------------------------

struct AsyncWait : std::enable_shared_from_this<AsyncWait> {
    AsyncWait(asio::io_context& context, int socket_fd, std::uint64_t t)
        : io(context), socket(context, socket_fd), timer(context), token(t) {}

    asio::io_context& io;
    asio::posix::stream_descriptor socket;
    asio::steady_timer timer;
    std::uint64_t token;
    Queue::Impl* owner = nullptr;               // null once the queue is gone
    std::unique_ptr<WaitCompletion> completion; // of the pending wait
    std::size_t record_size = 0;
    Clock::time_point deadline{};
    std::uint64_t epoch = 0;
    bool pending = false;

    void arm() noexcept;
    void disarm() noexcept;
    // The wait's outcome if it has one now: {} ready, or an error; nullopt to keep waiting.
    std::optional<std::error_code> poll();
    // One look at the ring: ready ({}), an error of the ring, or nullopt.
    std::optional<std::error_code> look(bool check_claims);
    void complete(std::error_code ec);
    void watch_socket();
    void watch_timer();
};

// --- waking ---------------------------------------------------------------------------------

[[gnu::noinline]] void Queue::Impl::wake_consumer() noexcept {
    const std::uint32_t w = ctrl->consumer_waiting.load(std::memory_order_acquire);
    if (w & waiting_sync) {
        ctrl->data_seq.fetch_add(1, std::memory_order_seq_cst);
        futex_wake_all(ctrl->data_seq);
    }
    if (w & waiting_async)
        send_notify(ctrl->consumer_notify.load(std::memory_order_acquire));
}

[[gnu::noinline]] void Queue::Impl::wake_producers() noexcept {
    // A producer killed asleep leaves its bit up: look for dead ones first (at most once per
    // slice), so a wait nobody will ever end costs one slice of wake-ups, not one per record.
    if (reap_due()) {
        reap_dead_waiters();
        if (ctrl->producers_waiting.load(std::memory_order_relaxed) == 0)
            return;
    }
    ctrl->space_seq.fetch_add(1, std::memory_order_seq_cst);
    futex_wake_all(ctrl->space_seq);
    std::uint64_t async_bits = ctrl->producers_async.load(std::memory_order_acquire);
    while (async_bits != 0) {
        const int i = std::countr_zero(async_bits);
        async_bits &= async_bits - 1;
        send_notify(ctrl->slots[i].notify.load(std::memory_order_acquire));
    }
}

void Queue::Impl::send_notify(std::uint64_t token) noexcept {
    if (token == 0)
        return;
    if (!notify_socket)
        notify_socket.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!notify_socket)
        return; // the waiter's timer slice will find the record
    sockaddr_un addr;
    const socklen_t len = notify_address(token, addr);
    // EAGAIN: the waiter has unread wake-ups already. ECONNREFUSED: it is gone. Both are fine.
    (void)::sendto(notify_socket.get(), "", 1, MSG_DONTWAIT | MSG_NOSIGNAL,
                   reinterpret_cast<const sockaddr*>(&addr), len);
}

// --- spinning -------------------------------------------------------------------------------

// Most spinning waits end within a few hundred nanoseconds, and a clock read costs 20-40 ns in
// a VM: burst() looks a few times without the clock before spin_until() measures. `backoff`
// (the producer waiting for room) doubles the pause between looks, up to about a microsecond:
// each look at `head` takes its line from the consumer, whose next release() must take it
// back, so polling a full ring tightly slows the very consumer it waits for, and the ring
// stays full (measured: half the throughput). A consumer waiting for a record does not back
// off: that is the latency path.
constexpr unsigned max_pauses = 64;
// An mpsc consumer whose head record is claimed but not yet committed looks less often:
// each look takes the header's line from the producer that is about to commit into it
// (measured with headers in the ring: +15-30% mpsc throughput).
constexpr unsigned claim_pauses = 8;

template <class Ready>
inline bool Queue::Impl::burst(std::chrono::nanoseconds timeout, bool backoff, Ready&& ready) {
    if (spin <= std::chrono::nanoseconds::zero() || timeout < 10us)
        return false;
    unsigned pauses = 1;
    for (unsigned spent = 0; spent < 256; spent += pauses) {
        for (unsigned k = 0; k < pauses; ++k)
            cpu_relax();
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
inline bool Queue::Impl::spin_until(Clock::time_point deadline, bool backoff, Ready&& ready) {
    if (spin <= std::chrono::nanoseconds::zero())
        return false;
    const auto end = std::min(deadline, deadline_after(Clock::now(), spin));
    for (unsigned i = 1;; ++i) {
        saw_claim = false;
        if (ready())
            return true;
        const unsigned pauses = backoff ? max_pauses : saw_claim ? claim_pauses : 1;
        for (unsigned k = 0; k < pauses; ++k)
            cpu_relax();
        if ((i & 63) == 0 && Clock::now() >= end)
            return false;
    }
}

// --- sync waits -----------------------------------------------------------------------------

[[gnu::noinline]] Result<std::span<std::byte>>
Queue::Impl::reserve_wait(std::size_t n, std::chrono::nanoseconds timeout) {
    Result<std::span<std::byte>> r = errc::full;
    auto ready = [&] {
        r = try_reserve_slow(n);
        return r || !is_full(r.error());
    };
    if (burst(timeout, true, ready))
        return r;
    const auto deadline = deadline_after(Clock::now(), timeout);
    if (spin_until(deadline, true, ready))
        return r;
    sync_waiting = true;
    ctrl->producers_waiting.fetch_or(my_bit(), std::memory_order_seq_cst); // as in front_wait()
    heavy_barrier(sync);
    for (;;) {
        const std::uint32_t seq = ctrl->space_seq.load(std::memory_order_acquire);
        r = try_reserve_slow(n);
        const auto now = Clock::now();
        std::error_code outcome;
        if (!r && is_full(r.error())) {
            if (const auto gone = peer_gone(liveness_due(now))) {
                // The consumer's last releases came before it left: look once more.
                r = try_reserve_slow(n);
                if (!r && is_full(r.error()))
                    outcome = gone;
            } else if (now >= deadline) {
                outcome = errc::timeout;
            } else {
                futex_wait(ctrl->space_seq, seq, std::min(deadline - now, next_liveness - now));
                continue; // still counted as waiting
            }
        }
        sync_waiting = false;
        if (!(async && async->pending)) // an async wait of ours keeps the bit up
            ctrl->producers_waiting.fetch_and(~my_bit(), std::memory_order_relaxed);
        if (outcome)
            return outcome;
        return r;
    }
}

// The consumer's look at the ring in the waits: always inlined into them.
[[gnu::always_inline]] inline Result<std::span<const std::byte>> Queue::Impl::try_front() {
    if (role == Role::consumer && !taken.active) [[likely]] {
        if (head == tail_cache) {
            tail_cache = ctrl->tail.load(std::memory_order_acquire);
            if (head == tail_cache)
                return errc::empty;
            if (take_lone())
                return std::span<const std::byte>(payload_at(head), taken.length);
        }
        const RecordHeader* h = header_at(head);
        const std::uint64_t c = h->control.load(std::memory_order_acquire);
        const std::uint32_t length = h->length;
        if (readable(c, length, tail_cache - head)) [[likely]] {
            taken = {true, head, record_extent(c), length};
            return std::span<const std::byte>(payload_at(head), length);
        }
    }
    return try_front_slow(); // everything else, checked again from the start
}

[[gnu::noinline]] Result<std::span<const std::byte>>
Queue::Impl::front_wait(std::chrono::nanoseconds timeout) {
    Result<std::span<const std::byte>> r = errc::empty;
    auto ready = [&] {
        r = try_front();
        return r || !is_empty(r.error());
    };
    if (burst(timeout, false, ready))
        return r;
    const auto deadline = deadline_after(Clock::now(), timeout);
    if (spin_until(deadline, false, ready))
        return r;
    // The barrier pairs with the publishers' only when the flag goes up: while it stays up,
    // every later publication sees it and bumps data_seq, so the next turns need only re-read
    // data_seq before looking (see "Memory ordering" in queue.cpp).
    ctrl->consumer_waiting.fetch_or(waiting_sync, std::memory_order_seq_cst);
    heavy_barrier(sync);
    for (;;) {
        const std::uint32_t seq = ctrl->data_seq.load(std::memory_order_acquire);
        const auto now = Clock::now();
        const bool due = liveness_due(now);
        if (due)
            reap_dead_waiters(); // and counts records a dead producer left unwritten
        check_claims = due;
        r = try_front();
        check_claims = false;
        std::error_code outcome;
        if (!r && is_empty(r.error())) {
            if (const auto gone = peer_gone(due)) {
                // What the producers published before they left or died is visible now: one
                // more look (claims checked), so peer_closed comes only with the ring empty.
                check_claims = true;
                r = try_front();
                check_claims = false;
                if (!r && is_empty(r.error()))
                    outcome = gone;
            } else if (now >= deadline) {
                outcome = errc::timeout;
            } else {
                futex_wait(ctrl->data_seq, seq, std::min(deadline - now, next_liveness - now));
                continue; // still announced as waiting
            }
        }
        ctrl->consumer_waiting.fetch_and(~waiting_sync, std::memory_order_relaxed);
        if (outcome)
            return outcome;
        return r;
    }
}

// --- async waits ----------------------------------------------------------------------------

void AsyncWait::arm() noexcept {
    Control* c = owner->ctrl;
    if (owner->role == Role::consumer) {
        c->consumer_notify.store(token, std::memory_order_relaxed);
        c->consumer_waiting.fetch_or(waiting_async, std::memory_order_seq_cst);
    } else {
        c->slots[owner->slot].notify.store(token, std::memory_order_relaxed);
        c->producers_async.fetch_or(owner->my_bit(), std::memory_order_relaxed);
        c->producers_waiting.fetch_or(owner->my_bit(), std::memory_order_seq_cst);
    }
    heavy_barrier(owner->sync);
}

void AsyncWait::disarm() noexcept {
    Control* c = owner->ctrl;
    if (owner->role == Role::consumer) {
        c->consumer_waiting.fetch_and(~waiting_async, std::memory_order_relaxed);
    } else {
        if (!owner->sync_waiting)
            c->producers_waiting.fetch_and(~owner->my_bit(), std::memory_order_relaxed);
        c->producers_async.fetch_and(~owner->my_bit(), std::memory_order_relaxed);
        c->slots[owner->slot].notify.store(0, std::memory_order_relaxed);
    }
}

std::optional<std::error_code> AsyncWait::look(bool check_claims) {
    if (owner->role == Role::consumer) {
        owner->check_claims = check_claims;
        auto r = owner->try_front(); // a record found stays taken: the next front() returns it
        owner->check_claims = false;
        if (r)
            return std::error_code{};
        if (!is_empty(r.error()))
            return r.error();
    } else {
        if (record_size > owner->max_record())
            return make_error_code(errc::record_too_large);
        if (owner->has_room(record_size))
            return std::error_code{};
    }
    return std::nullopt;
}

std::optional<std::error_code> AsyncWait::poll() {
    const auto now = Clock::now();
    const bool due = owner->liveness_due(now);
    if (auto outcome = look(due))
        return outcome;
    if (const auto gone = owner->peer_gone(due)) {
        // What the other side did before it went is visible now: one more look (as the
        // sync waits do), so a consumer hears peer_closed only with the ring empty.
        if (auto outcome = look(true))
            return outcome;
        return gone;
    }
    if (now >= deadline)
        return make_error_code(errc::timeout);
    return std::nullopt;
}

void AsyncWait::complete(std::error_code ec) {
    pending = false;
    ++epoch;
    disarm();
    socket.cancel();
    timer.cancel();
    std::exchange(completion, nullptr)->post(ec);
}

void AsyncWait::watch_socket() {
    socket.async_wait(asio::posix::stream_descriptor::wait_read, [self = shared_from_this(),
                                                                  e = epoch](std::error_code ec) {
        if (!self->owner || !self->pending || e != self->epoch || ec)
            return;
        char buf[64];
        while (::recv(self->socket.native_handle(), buf, sizeof buf, MSG_DONTWAIT) >= 0) {
        }
        if (auto outcome = self->poll())
            self->complete(*outcome);
        else
            self->watch_socket();
    });
}

// Wakes the wait at the next liveness slice, or at its deadline if that comes first.
void AsyncWait::watch_timer() {
    timer.expires_at(std::min(deadline, deadline_after(Clock::now(), liveness_slice)));
    timer.async_wait([self = shared_from_this(), e = epoch](std::error_code ec) {
        if (!self->owner || !self->pending || e != self->epoch || ec)
            return;
        if (auto outcome = self->poll())
            self->complete(*outcome);
        else
            self->watch_timer();
    });
}

void Queue::Impl::async_wait(asio::io_context& io, std::size_t record_size,
                             std::chrono::nanoseconds timeout,
                             std::unique_ptr<WaitCompletion> completion) {
    if (async && &async->io != &io)
        throw std::invalid_argument("bus::shm::Queue::async_wait: one io_context per queue");
    if (async && async->pending)
        throw std::logic_error("bus::shm::Queue::async_wait: a wait is already pending");
    if (!async) {
        // Bind a datagram socket to a fresh random abstract name; its token goes into the
        // segment for publishers to find.
        UniqueFd sock(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        std::error_code ec;
        std::uint64_t token = 0;
        if (!sock)
            ec = last_error();
        for (int attempt = 0; !ec; ++attempt) {
            if (::getrandom(&token, sizeof token, 0) != sizeof token)
                ec = last_error();
            else if (token == 0)
                continue;
            else {
                sockaddr_un addr;
                const socklen_t len = notify_address(token, addr);
                if (::bind(sock.get(), reinterpret_cast<const sockaddr*>(&addr), len) == 0)
                    break;
                if (errno != EADDRINUSE || attempt > 8)
                    ec = last_error();
            }
        }
        if (ec) {
            completion->post(ec);
            return;
        }
        async = std::make_shared<AsyncWait>(io, sock.release(), token);
        async->owner = this;
    }
    AsyncWait& a = *async;
    a.pending = true;
    a.completion = std::move(completion);
    a.record_size = record_size;
    a.deadline = deadline_after(Clock::now(), timeout);
    ++a.epoch;
    a.arm();
    next_liveness = {}; // check the other side at once
    if (auto outcome = a.poll()) {
        a.complete(*outcome);
        return;
    }
    a.watch_socket();
    a.watch_timer();
}

void Queue::Impl::cancel() {
    if (async && async->pending)
        async->complete(std::make_error_code(std::errc::operation_canceled));
}

// Detaching: a pending wait ends with operation_canceled, and the handlers of earlier waits still
// queued on the loop find the queue gone (owner is null).
void Queue::Impl::end_async() noexcept {
    if (!async)
        return;
    cancel();
    async->owner = nullptr;
    async.reset();
}

} // namespace bus::shm
