// Creating and opening a queue, attaching a handle to it and detaching it, and the dead: how a
// handle tells that a peer died, and how it takes back what a dead one left. Why liveness is
// the kernel's byte locks, and what a death costs, is "Death" in queue.cpp.
//
// Invariants kept here:
// - A slot belongs to whoever holds its byte lock. A handle marks its slot attached before it
//   takes its role's lock, and free before its descriptor (and every lock) goes, so a slot
//   attached with its lock free is a peer that died, attached or attaching.
// - A segment's name is removed only by whoever holds the write lock on its holder byte: by
//   create() when no live process holds the segment, by the last handle out when it is empty.
// - A producer's waiting bits are cleared only with its slot's byte lock held: by the producer
//   itself, or by whoever found it dead (reap_slot_waits()).
#include "bus/shm_queue.hpp"

#include "shm/layout.hpp"
#include "shm/queue_impl.hpp"
#include "shm/segment.hpp"

#include "bus/unique_fd.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <new>
#include <thread>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace bus::shm {

using namespace detail;
using namespace std::chrono_literals;

namespace {

// create() found the name taken. Removes the segment if no live process holds it; returns
// std::errc::file_exists if one does, {} if the name may be created again.
std::error_code remove_if_stale(const std::string& shm) {
    UniqueFd fd(::shm_open(shm.c_str(), O_RDWR | O_CLOEXEC, 0));
    if (!fd) {
        if (errno == ENOENT)
            return {};
        if (errno == EACCES)
            return std::make_error_code(std::errc::file_exists);
        return last_error();
    }
    // A creator takes its holder lock just after shm_open(O_EXCL): a segment that is not
    // initialized and not held may be one whose creator is between the two, so look again for
    // a while before deciding its creator died.
    const auto give_up = Clock::now() + 200ms;
    for (;;) {
        auto ec = lock_byte(fd.get(), lock_holder, F_WRLCK, false);
        if (ec == std::errc::resource_unavailable_try_again)
            return std::make_error_code(std::errc::file_exists);
        if (ec)
            return ec;
        struct stat st {};
        if (::fstat(fd.get(), &st) != 0)
            return last_error();
        if (st.st_nlink == 0)
            return {}; // someone else removed it meanwhile
        if (segment_ready(fd.get(), static_cast<std::uint64_t>(st.st_size)) ||
            Clock::now() >= give_up)
            break;
        lock_byte(fd.get(), lock_holder, F_UNLCK, false);
        std::this_thread::sleep_for(2ms);
    }
    // We hold the write lock on this file, so nobody can have replaced the name meanwhile
    // (that needs the same lock): the name is still this stale segment.
    if (::shm_unlink(shm.c_str()) != 0 && errno != ENOENT)
        return last_error();
    return {};
}

} // namespace

// --- create and open ------------------------------------------------------------------------

Result<Queue> Queue::create(std::string_view name, std::size_t capacity, CreateOptions options) {
    auto shm = segment_name(name);
    if (!shm)
        return shm.error();
    if (capacity == 0 || capacity > max_capacity)
        return std::make_error_code(std::errc::invalid_argument);
    const std::uint64_t cap = std::max<std::uint64_t>(page_size(), std::bit_ceil(capacity));
    const mode_t permissions = options.group_access ? 0660 : 0600;

    UniqueFd fd;
    for (int attempt = 0;; ++attempt) {
        fd.reset(
            ::shm_open(shm.value().c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, permissions));
        if (fd)
            break;
        if (errno != EEXIST || attempt == 8)
            return last_error();
        if (auto ec = remove_if_stale(shm.value()))
            return ec;
    }
    // Hold it before anything else: a create() racing with us that finds the name must see it
    // held (remove_if_stale gives a creator time to get here).
    if (auto ec = lock_byte(fd.get(), lock_holder, F_RDLCK, true)) {
        ::shm_unlink(shm.value().c_str());
        return ec;
    }
    auto fail = [&](std::error_code ec) -> Result<Queue> {
        ::shm_unlink(shm.value().c_str());
        return ec;
    };
    // shm_open applied the umask; the mode is what the caller asked for.
    if (::fchmod(fd.get(), permissions) != 0)
        return fail(last_error());
    if (::ftruncate(fd.get(), static_cast<off_t>(ring_offset(cap) + cap)) != 0)
        return fail(last_error());
    auto mapping = map_queue(fd.get(), cap);
    if (!mapping)
        return fail(mapping.error());

    auto* ctrl = new (mapping.value().data()) Control{};
    ctrl->last.store(no_record, std::memory_order_relaxed);
    std::memcpy(ctrl->id.magic, magic, sizeof magic);
    ctrl->id.version = format_version;
    ctrl->id.layout = layout_fingerprint();
    ctrl->id.capacity = cap;
    ctrl->id.control_size = static_cast<std::uint32_t>(control_size());
    ctrl->id.mode = static_cast<std::uint32_t>(options.mode);
    ctrl->id.sync = static_cast<std::uint32_t>(process_sync());
    ctrl->id.creator_pid = ::getpid();
    ctrl->id.creator_start_time = process_start_time(::getpid());
    ctrl->ready.store(1, std::memory_order_release);

    auto impl = std::make_unique<Impl>();
    impl->name = std::string(name);
    impl->shm = shm.value();
    impl->fd = std::move(fd);
    impl->mapping = std::move(mapping).value();
    impl->ctrl = ctrl;
    impl->headers = reinterpret_cast<RecordHeader*>(impl->mapping.data() + control_size());
    impl->ring = impl->mapping.data() + ring_offset(cap);
    impl->capacity = cap;
    impl->mask = cap - 1;
    impl->mode = options.mode;
    impl->role = options.role;
    impl->sync = static_cast<Sync>(ctrl->id.sync);
    if (auto ec = impl->attach()) {
        impl->ctrl = nullptr; // nothing to detach
        return fail(ec);
    }
    return Queue(std::move(impl));
}

Result<Queue> Queue::open(std::string_view name, Role role) {
    auto shm = segment_name(name);
    if (!shm)
        return shm.error();
    if (role != Role::producer && role != Role::consumer)
        return std::make_error_code(std::errc::invalid_argument);

    UniqueFd fd;
    struct stat st {};
    for (int attempt = 0;; ++attempt) {
        fd.reset(::shm_open(shm.value().c_str(), O_RDWR | O_CLOEXEC, 0));
        if (!fd)
            return last_error();
        if (auto ec = lock_byte(fd.get(), lock_holder, F_RDLCK, true))
            return ec;
        if (::fstat(fd.get(), &st) != 0)
            return last_error();
        if (st.st_nlink > 0)
            break;
        // Removed between our shm_open and our lock (its last holder left): look again.
        if (attempt == 8)
            return std::make_error_code(std::errc::no_such_file_or_directory);
    }
    // The creator may still be initializing it.
    const auto give_up = Clock::now() + 1s;
    while (!segment_ready(fd.get(), static_cast<std::uint64_t>(st.st_size))) {
        if (Clock::now() >= give_up || !held_by_other(fd.get(), lock_holder))
            return errc::layout_mismatch; // nobody is initializing it: not a queue
        std::this_thread::sleep_for(1ms);
        if (::fstat(fd.get(), &st) != 0)
            return last_error();
    }
    Identity header{};
    {
        auto view = map_read_only(fd.get(), control_size());
        if (!view)
            return view.error();
        std::memcpy(&header, view.value().data(), sizeof header);
    }
    if (auto ec = check_layout(header, static_cast<std::uint64_t>(st.st_size)))
        return ec;
    const auto sync = static_cast<Sync>(header.sync);
    if (sync == Sync::membarrier && process_sync() != Sync::membarrier)
        return std::make_error_code(std::errc::operation_not_supported);
    auto mapping = map_queue(fd.get(), header.capacity);
    if (!mapping)
        return mapping.error();

    auto impl = std::make_unique<Impl>();
    impl->name = std::string(name);
    impl->shm = shm.value();
    impl->fd = std::move(fd);
    impl->mapping = std::move(mapping).value();
    impl->ctrl = reinterpret_cast<Control*>(impl->mapping.data());
    impl->headers = reinterpret_cast<RecordHeader*>(impl->mapping.data() + control_size());
    impl->ring = impl->mapping.data() + ring_offset(header.capacity);
    impl->capacity = header.capacity;
    impl->mask = header.capacity - 1;
    impl->mode = static_cast<Mode>(header.mode);
    impl->role = role;
    impl->sync = sync;
    if (auto ec = impl->attach()) {
        impl->ctrl = nullptr; // never attached: leave the segment alone
        return ec;
    }
    return Queue(std::move(impl));
}

// --- attach and detach ----------------------------------------------------------------------

std::error_code Queue::Impl::attach() {
    tail_word = &ctrl->tail;
    produced_word = &ctrl->produced;
    last_word = &ctrl->last;
    head_word = &ctrl->head;
    consumed_word = &ctrl->consumed;
    consumer_waiting = &ctrl->consumer_waiting;
    producers_waiting = &ctrl->producers_waiting;
    reserve_lock = &ctrl->reserve_lock;
    trail = std::min<std::uint64_t>(consumer_trail, capacity / 4);
    exclusive = role == Role::producer && mode == Mode::spsc;
    const int f = fd.get();

    // A slot first, marked attached, and only then the role's lock. The order is what makes a
    // peer killed while it attaches show as dead: from the moment anyone can see the role held
    // (peer_alive()), the slot says attached, so a kill at any later point leaves an attached
    // slot whose lock nobody holds, which is what peer_gone() looks for. (With the role
    // first, a kill between the two left nothing behind: the other side took the peer for one
    // that never came and waited out its timeout instead of hearing peer_dead.) Until the role
    // is ours, the slot's byte lock says "alive, attaching" to anyone who looks.
    //
    // A slot: a free one if there is one, else one whose owner died. Owning its byte lock is
    // owning the slot.
    int chosen = -1;
    for (int pass = 0; pass < 2 && chosen < 0; ++pass) {
        for (std::size_t i = 0; i < max_peers; ++i) {
            const auto state = ctrl->slots[i].state.load(std::memory_order_acquire);
            if (pass == 0 && state != static_cast<std::uint32_t>(SlotState::free))
                continue;
            if (!lock_byte(f, lock_slot(i), F_WRLCK, false)) {
                chosen = static_cast<int>(i);
                break;
            }
        }
    }
    if (chosen < 0)
        return errc::queue_in_use;
    slot = static_cast<std::uint32_t>(chosen);
    PeerSlot& me = ctrl->slots[slot];
    generation = me.generation.load(std::memory_order_relaxed) + 1;
    me.generation.store(generation, std::memory_order_relaxed);
    me.role.store(static_cast<std::uint32_t>(role), std::memory_order_relaxed);
    me.pid.store(::getpid(), std::memory_order_relaxed);
    me.start_time.store(process_start_time(::getpid()), std::memory_order_relaxed);
    me.notify.store(0, std::memory_order_relaxed);
    me.state.store(static_cast<std::uint32_t>(SlotState::attached), std::memory_order_release);

    std::error_code ec;
    if (role == Role::producer)
        ec = lock_byte(f, lock_producers, mode == Mode::spsc ? F_WRLCK : F_RDLCK, false);
    else
        ec = lock_byte(f, lock_consumer, F_WRLCK, false);
    if (ec) {
        // The end is taken (or the lock failed): give the slot back.
        me.state.store(static_cast<std::uint32_t>(SlotState::free), std::memory_order_release);
        lock_byte(f, lock_slot(slot), F_UNLCK, false);
        if (ec == std::errc::resource_unavailable_try_again)
            return errc::queue_in_use;
        return ec;
    }

    // The consumer end is exclusive, so nobody else of its role waits: waiting words still up
    // were left by a predecessor killed asleep in a wait. Producers wait by slot bit: a bit of
    // our slot was left by a dead predecessor in it (we hold the slot's lock), and the bits of
    // other dead producers go below. While such a word is up, every release() (or reservation)
    // on the other side pays a wake-up (a locked RMW and a futex syscall) for nobody.
    if (role == Role::consumer) {
        ctrl->consumer_waiting.store(0, std::memory_order_relaxed);
        ctrl->consumer_notify.store(0, std::memory_order_relaxed);
    } else {
        reap_slot_waits(slot);
    }
    reserving = &me.reserving;
    committed_tag = pack_record(0, RecordState::committed, slot, generation);
    biased_id = ((slot + 1) | (generation & 0xffff) << 8) | lock_biased;
    if (role == Role::producer && mode == Mode::mpsc)
        ctrl->producers_present.fetch_or(my_bit(), std::memory_order_relaxed);

    // Slots of our role whose owners died: we replace them, so waiters on the other side stop
    // reporting peer_dead. Their claims in the ring stay recognizably dead (lock free).
    for (std::size_t i = 0; i < max_peers; ++i) {
        PeerSlot& s = ctrl->slots[i];
        if (i == slot ||
            s.role.load(std::memory_order_relaxed) != static_cast<std::uint32_t>(role) ||
            s.state.load(std::memory_order_acquire) !=
                static_cast<std::uint32_t>(SlotState::attached))
            continue;
        if (!lock_byte(f, lock_slot(i), F_WRLCK, false)) {
            if (role == Role::producer)
                reap_slot_waits(i);
            s.notify.store(0, std::memory_order_relaxed);
            s.state.store(static_cast<std::uint32_t>(SlotState::free), std::memory_order_release);
            lock_byte(f, lock_slot(i), F_UNLCK, false);
        }
    }
    // A consumer takes back the waits of dead producers too (a producer's successor may never
    // come): the first release() would, but the slate is clean from the start this way.
    if (role == Role::consumer)
        reap_dead_waiters();

    // Arrived: a waiter on the other side that said peer_closed or peer_dead looks again.
    changes(role).fetch_add(1, std::memory_order_release);

    if (role == Role::producer) {
        tail = ctrl->tail.load(std::memory_order_acquire);
        head_cache = ctrl->head.load(std::memory_order_acquire);
        produced = ctrl->produced.load(std::memory_order_relaxed);
    } else {
        head = ctrl->head.load(std::memory_order_acquire);
        tail_cache = ctrl->tail.load(std::memory_order_acquire);
        consumed = ctrl->consumed.load(std::memory_order_relaxed);
        skipped = ctrl->skipped.load(std::memory_order_relaxed);
    }
    return {};
}

Queue::Impl::~Impl() {
    if (!ctrl)
        return;
    end_async();
    if (reservation.active)
        abort();
    if (role == Role::producer && mode == Mode::mpsc)
        release_bias();
    // A record taken with front() and not released stays: head has not moved past it.
    PeerSlot& me = ctrl->slots[slot];
    me.notify.store(0, std::memory_order_relaxed);
    me.state.store(static_cast<std::uint32_t>(SlotState::free), std::memory_order_release);
    // Leaving ("Leaving" in queue.cpp): the slot is free and the role's lock gone before the
    // count moves, so a waiter that sees the new count and finds nobody of our role attached
    // may say peer_closed; then the other side is woken to look at once.
    lock_byte(fd.get(), role == Role::producer ? lock_producers : lock_consumer, F_UNLCK, false);
    changes(role).fetch_add(1, std::memory_order_release);
    if (role == Role::producer)
        notify_consumer();
    else
        notify_producers();
    // The last handle out removes a queue that holds nothing: upgrading our read lock on the
    // holder byte succeeds only if no other open file description holds it.
    if (!lock_byte(fd.get(), lock_holder, F_WRLCK, false)) {
        struct stat st {};
        if (::fstat(fd.get(), &st) == 0 && st.st_nlink > 0 &&
            ctrl->head.load(std::memory_order_acquire) ==
                ctrl->tail.load(std::memory_order_acquire))
            ::shm_unlink(shm.c_str());
    }
    // The mapping, then the descriptor (and with it every lock).
    mapping = Mapping();
    fd.reset();
}

// --- the dead: telling them, and taking back what they left --------------------------------

// Why a waiter should stop waiting for the other side: errc::peer_dead (a handle of it died
// and nobody live replaced it), errc::peer_closed (it came, and every handle of it left
// cleanly), or {} (alive, attaching, or never came). The syscalls are paid at most once per
// liveness slice (`due`), or when the other side's count of arrivals and departures moved;
// in between, "alive" stands (a death, the one change the count misses, waits for the slice).
// "Gone" is never taken from the cache: a replacement that is still attaching has not bumped
// the count yet, and a waiter told peer_dead again on its stale word would not wait for it
// (only one look per wait that ends anyway: a gone peer ends the wait).
std::error_code Queue::Impl::peer_gone(bool due) noexcept {
    const Role other_role = role == Role::producer ? Role::consumer : Role::producer;
    const std::uint32_t seen = changes(other_role).load(std::memory_order_acquire);
    if (!due && seen == seen_changes && !peer_verdict)
        return peer_verdict;
    seen_changes = seen;
    peer_verdict = look_for_peers(seen);
    return peer_verdict;
}

std::error_code Queue::Impl::look_for_peers(std::uint32_t seen) const noexcept {
    if (other_side_alive())
        return {};
    const auto other =
        static_cast<std::uint32_t>(role == Role::producer ? Role::consumer : Role::producer);
    bool attaching = false;
    for (std::size_t i = 0; i < max_peers; ++i) {
        const PeerSlot& s = ctrl->slots[i];
        if (s.state.load(std::memory_order_acquire) !=
                static_cast<std::uint32_t>(SlotState::attached) ||
            s.role.load(std::memory_order_relaxed) != other)
            continue;
        // Attached, nobody of that role holds the role's lock, and nobody holds the slot's:
        // it died (attached or attaching). A slot whose lock is held is a live peer that is
        // still attaching (attach() marks the slot before it takes the role).
        if (!held_by_other(fd.get(), lock_slot(i)))
            return errc::peer_dead;
        attaching = true;
    }
    // Nobody attached: gone if someone of that role ever came (all left cleanly), else not
    // yet come.
    if (attaching || seen == 0)
        return {};
    return errc::peer_closed;
}

bool Queue::Impl::claimer_dead(std::uint64_t control) const noexcept {
    const std::uint32_t s = record_slot(control);
    if (s >= max_peers)
        return true; // no producer can own this claim
    const PeerSlot& p = ctrl->slots[s];
    if ((p.generation.load(std::memory_order_acquire) & 0xffff) != record_generation(control))
        return true; // the slot changed hands: the claimer is gone without committing
    return !held_by_other(fd.get(), lock_slot(s));
}

// Takes back the waits the producer of slot `i` announced. Only with the slot's byte lock held
// (so its owner is us, or dead and nobody else is reaping it).
void Queue::Impl::reap_slot_waits(std::size_t i) noexcept {
    const std::uint64_t bit = std::uint64_t{1} << i;
    ctrl->producers_waiting.fetch_and(~bit, std::memory_order_relaxed);
    ctrl->producers_async.fetch_and(~bit, std::memory_order_relaxed);
    ctrl->lock_sleepers.fetch_and(~bit, std::memory_order_relaxed);
    ctrl->producers_present.fetch_and(~bit, std::memory_order_relaxed);
    PeerSlot& s = ctrl->slots[i];
    s.notify.store(0, std::memory_order_relaxed);
    // Died between reserve() and commit() holding the lock biased: the record never entered the
    // ring (tail moves at commit), but it is counted as the consumer counts one it steps over.
    if (s.reserving.exchange(0, std::memory_order_acq_rel) != 0) {
        ctrl->abandoned.fetch_add(1, std::memory_order_relaxed);
        futex_wake_all(s.reserving); // a producer taking the lock over waits on it
    }
}

// reap_slot_waits(i) if the producer of slot i is dead: whether it was.
bool Queue::Impl::reap_if_dead(std::size_t i) noexcept {
    const long byte = lock_slot(i);
    if (lock_byte(fd.get(), byte, F_WRLCK, false))
        return false; // held: alive (or attaching)
    reap_slot_waits(i);
    lock_byte(fd.get(), byte, F_UNLCK, false);
    return true;
}

// Clears the waiting bits of producers that died asleep: a bit whose slot's byte lock we can
// take has no live owner. The slot itself stays as it is (attached and unlocked is how the
// other side learns that a producer died; the dead one's successor frees it).
void Queue::Impl::reap_dead_waiters() noexcept {
    std::uint64_t bits = ctrl->producers_waiting.load(std::memory_order_relaxed) |
                         ctrl->producers_async.load(std::memory_order_relaxed) |
                         ctrl->lock_sleepers.load(std::memory_order_relaxed) |
                         ctrl->producers_present.load(std::memory_order_relaxed);
    if (role == Role::producer)
        bits &= ~my_bit(); // ours: we are alive (and our own lock never conflicts)
    while (bits != 0) {
        const int i = std::countr_zero(bits);
        bits &= bits - 1;
        reap_if_dead(static_cast<std::size_t>(i));
    }
}

} // namespace bus::shm
