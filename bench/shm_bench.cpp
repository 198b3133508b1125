// bench/run shm — the shared-memory queue beside its peers, in one run (issue 5).
//
// Throughput: one producer process and one consumer process (fork()ed, pinned to different
// CPUs when there are two). The producer copies each record from a source buffer into the
// transport (in place where it allows: reserve -> memcpy -> commit); the consumer reads every
// byte of each record (a sum of its 64-bit words) where the transport leaves it: in place for
// bus and the minimal ring, in its own buffer for message_queue and the channel, which copy.
// Measured on the consumer for --seconds after the first record. The peers run in turn within
// each of --rounds rounds (so a slow moment of a shared machine hits them alike), and the table
// gives the median round.
//   bus spsc / bus mpsc     bus::shm::Queue, spinning waits (mpsc: one producer, the mode's cost)
//   message_queue           boost::interprocess::message_queue (mutex + condition in shm)
//   minimal ring            a lock-free SPSC ring of fixed-size slots, no header, no waking, no
//                           liveness: the limit
//   memcpy                  one thread copying the same records into a ring-sized buffer: the
//                           one copy any transport must make
//   channel                 bus::Channel over a socketpair
// The rings (bus, minimal, memcpy's destination) are --ring bytes; message_queue holds the
// same number of bytes.
//
// Latency: ping-pong of 64-byte records between the two processes (two queues), round-trip
// p50/p99, with spinning waits and with sleeping waits (bus: spin 0, straight to the futex;
// message_queue: blocking receive; channel: the Asio loop blocking in epoll).
//
// Ends with one `bar:` line per target of the issue: `bar: NAME measured=X target=Y ok|short`.
#include "common/options.hpp"
#include "common/process.hpp"
#include "common/report.hpp"
#include "common/watchdog.hpp"

#include <bus/channel.hpp>
#include <bus/shm_queue.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/interprocess/ipc/message_queue.hpp>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

namespace {

namespace shm = bus::shm;
namespace bip = boost::interprocess;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// --seconds, --rounds and --only (the case keys: tput.PEER.SIZE, rtt.PEER.WAITS), and --ring.
struct Options : bench::Options {
    Options() {
        seconds = 0.5;
        rounds = 5;
    }
    std::size_t ring = 4 << 20;
};
Options opt;

constexpr std::uint64_t end_marker = ~std::uint64_t{0};

// What the two processes share besides the transport under test, mapped before fork().
struct Shared {
    std::atomic<int> ready; // the parent set up the transport
    std::atomic<int> stop;  // the consumer has measured enough
};

Shared* make_shared_block() {
    void* p =
        ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        std::perror("mmap");
        std::exit(2);
    }
    return new (p) Shared{};
}

void wait_ready(Shared& s) {
    while (!s.ready.load(std::memory_order_acquire))
        std::this_thread::yield();
}

// Runs `child` in a forked process pinned to CPU 0 (the parent runs on CPU 1).
pid_t fork_child(const std::function<int()>& child) {
    return bench::fork_child("shm-bench child", child, {.cpu = 0});
}

// The same, with a socketpair: `child` gets its end.
bench::SocketPeer fork_socket_child(const std::function<int(int socket)>& child) {
    return bench::fork_socket_peer("shm-bench child", child, {.cpu = 0});
}

// Out of line, as it was before it called bench::wait_child: inlined, it changes how the
// compiler lays out the measuring functions that end with it.
[[gnu::noinline]] void reap(pid_t pid) {
    if (!bench::wait_child(pid))
        std::fprintf(stderr, "shm-bench: a peer process failed\n");
}

std::vector<std::byte> source(std::size_t size) {
    std::vector<std::byte> b(size);
    for (std::size_t i = 0; i < size; ++i)
        b[i] = static_cast<std::byte>(i * 7 + 1);
    return b;
}

void put_seq(std::byte* p, std::uint64_t seq) {
    std::memcpy(p, &seq, sizeof seq);
}
std::uint64_t get_seq(const std::byte* p) {
    std::uint64_t s;
    std::memcpy(&s, p, sizeof s);
    return s;
}

[[noreturn, gnu::cold]] void die(const char* what, const std::error_code& ec) {
    std::fprintf(stderr, "shm-bench: %s: %s\n", what, ec.message().c_str());
    std::exit(2);
}

// For set-up calls. The per-record loops check in place instead: a Result passed by value is
// a 40-byte copy per record, which the minimal ring would not pay.
template <class T>
T value_or_die(bus::Result<T>&& r, const char* what) {
    if (!r)
        die(what, r.error());
    return std::move(r).value();
}

std::string queue_name(const char* what) {
    return std::string("bench.") + std::to_string(::getpid()) + "." + what;
}

// --- throughput -----------------------------------------------------------------------------

struct Throughput {
    double msgs = 0;  // per second
    double bytes = 0; // per second
};

// What a consumer does with a record: read every byte. Returns the record's seq.
std::uint64_t read_record(const std::byte* p, std::size_t size, std::uint64_t& sink) {
    std::uint64_t sum = 0;
    for (std::size_t i = 0; i + 8 <= size; i += 8) {
        std::uint64_t w;
        std::memcpy(&w, p + i, sizeof w);
        sum += w;
    }
    sink += sum;
    return get_seq(p);
}

// The consumer's side: `recv()` takes one record, reads it (read_record) and returns its seq.
template <class Recv>
Throughput consume_timed(Shared& s, std::size_t size, Recv&& recv) {
    recv(); // the first record starts the clock
    const auto start = Clock::now();
    const auto budget = std::chrono::duration<double>(opt.seconds);
    const std::uint64_t check_mask = size >= 1024 ? 0 : 63; // look at the clock every 64th
    std::uint64_t count = 0, measured = 0;
    double elapsed = 0;
    for (;;) {
        if (recv() == end_marker)
            break;
        ++count;
        if (!measured && (count & check_mask) == 0) {
            const auto now = Clock::now();
            if (now - start >= budget) {
                measured = count;
                elapsed = std::chrono::duration<double>(now - start).count();
                s.stop.store(1, std::memory_order_relaxed);
            }
        }
    }
    if (!measured) // the producer stopped first (cannot happen unless it failed)
        return {};
    return {static_cast<double>(measured) / elapsed,
            static_cast<double>(measured) * static_cast<double>(size) / elapsed};
}

// The producer's side: `send(seq)` sends one record; sends the end marker after `stop`.
template <class Send>
void produce_until_stopped(Shared& s, Send&& send) {
    for (std::uint64_t seq = 0; !s.stop.load(std::memory_order_relaxed); ++seq)
        send(seq);
    send(end_marker);
}

Throughput bus_throughput(shm::Mode mode, std::size_t size) {
    Shared* s = make_shared_block();
    const std::string name = queue_name("tput");
    const pid_t child = fork_child([&] {
        wait_ready(*s);
        auto q = value_or_die(shm::Queue::open(name, shm::Role::producer), "open");
        q.set_spin(shm::forever);
        const auto src = source(size);
        produce_until_stopped(*s, [&](std::uint64_t seq) {
            auto slot = q.reserve(size);
            if (!slot)
                die("reserve", slot.error());
            std::memcpy(slot.value().data(), src.data(), size);
            put_seq(slot.value().data(), seq);
            q.commit();
        });
        return 0;
    });
    shm::CreateOptions options;
    options.mode = mode;
    options.role = shm::Role::consumer;
    auto q = value_or_die(shm::Queue::create(name, opt.ring, options), "create");
    q.set_spin(shm::forever);
    s->ready.store(1, std::memory_order_release);
    std::uint64_t sink = 0;
    auto result = consume_timed(*s, size, [&] {
        auto r = q.front();
        if (!r)
            die("front", r.error());
        const auto seq = read_record(r.value().data(), r.value().size(), sink);
        q.release();
        return seq;
    });
    reap(child);
    return result;
}

Throughput mq_throughput(std::size_t size) {
    Shared* s = make_shared_block();
    const std::string name = queue_name("mq");
    bip::message_queue::remove(name.c_str());
    const pid_t child = fork_child([&] {
        wait_ready(*s);
        bip::message_queue mq(bip::open_only, name.c_str());
        auto src = source(size);
        produce_until_stopped(*s, [&](std::uint64_t seq) {
            put_seq(src.data(), seq);
            mq.send(src.data(), size, 0);
        });
        return 0;
    });
    Throughput result;
    {
        bip::message_queue mq(bip::create_only, name.c_str(),
                              std::max<std::size_t>(opt.ring / size, 4), size);
        s->ready.store(1, std::memory_order_release);
        std::vector<std::byte> buf(size);
        std::uint64_t sink = 0;
        result = consume_timed(*s, size, [&] {
            std::size_t got = 0;
            unsigned priority = 0;
            mq.receive(buf.data(), size, got, priority);
            return read_record(buf.data(), got, sink);
        });
        reap(child);
    }
    bip::message_queue::remove(name.c_str());
    return result;
}

// The minimal ring: fixed-size slots, cached indices, release/acquire, spin with pause.
struct alignas(64) MiniRing {
    alignas(64) std::atomic<std::uint64_t> head;
    alignas(64) std::atomic<std::uint64_t> tail;
    alignas(64) std::byte data[1];
};

inline void cpu_relax() {
    __builtin_ia32_pause();
}

class MiniProducer {
public:
    MiniProducer(MiniRing* r, std::size_t slot, std::size_t slots)
        : r_(r), slot_(slot), mask_(slots - 1), slots_(slots) {}
    std::byte* reserve() {
        while (tail_ - head_cache_ >= slots_) {
            head_cache_ = r_->head.load(std::memory_order_acquire);
            if (tail_ - head_cache_ >= slots_)
                cpu_relax();
        }
        return r_->data + (tail_ & mask_) * slot_;
    }
    void commit() { r_->tail.store(++tail_, std::memory_order_release); }

private:
    MiniRing* r_;
    std::size_t slot_, mask_, slots_;
    std::uint64_t tail_ = 0, head_cache_ = 0;
};

class MiniConsumer {
public:
    MiniConsumer(MiniRing* r, std::size_t slot, std::size_t slots)
        : r_(r), slot_(slot), mask_(slots - 1) {}
    const std::byte* front() {
        while (head_ == tail_cache_) {
            tail_cache_ = r_->tail.load(std::memory_order_acquire);
            if (head_ == tail_cache_)
                cpu_relax();
        }
        return r_->data + (head_ & mask_) * slot_;
    }
    void release() { r_->head.store(++head_, std::memory_order_release); }

private:
    MiniRing* r_;
    std::size_t slot_, mask_;
    std::uint64_t head_ = 0, tail_cache_ = 0;
};

MiniRing* make_mini_ring(std::size_t bytes) {
    void* p = ::mmap(nullptr, sizeof(MiniRing) + bytes, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) {
        std::perror("mmap");
        std::exit(2);
    }
    return new (p) MiniRing{};
}

Throughput ring_throughput(std::size_t size) {
    Shared* s = make_shared_block();
    const std::size_t slots = std::bit_floor(opt.ring / size); // the mask needs a power of two
    MiniRing* ring = make_mini_ring(opt.ring);
    const pid_t child = fork_child([&] {
        MiniProducer p(ring, size, slots);
        const auto src = source(size);
        produce_until_stopped(*s, [&](std::uint64_t seq) {
            std::byte* slot = p.reserve();
            std::memcpy(slot, src.data(), size);
            put_seq(slot, seq);
            p.commit();
        });
        return 0;
    });
    MiniConsumer c(ring, size, slots);
    std::uint64_t sink = 0;
    auto result = consume_timed(*s, size, [&] {
        const auto seq = read_record(c.front(), size, sink);
        c.release();
        return seq;
    });
    reap(child);
    ::munmap(ring, sizeof(MiniRing) + opt.ring);
    return result;
}

Throughput memcpy_throughput(std::size_t size) {
    std::vector<std::byte> dst(opt.ring);
    const auto src = source(size);
    std::size_t off = 0;
    std::uint64_t count = 0;
    const auto start = Clock::now();
    const auto budget = std::chrono::duration<double>(opt.seconds);
    double elapsed = 0;
    for (;;) {
        std::memcpy(dst.data() + off, src.data(), size);
        asm volatile("" : : "r"(dst.data()) : "memory"); // the copy must happen
        off += size;
        if (off + size > opt.ring)
            off = 0;
        if (++count % 64 == 0) {
            const auto now = Clock::now();
            if (now - start >= budget) {
                elapsed = std::chrono::duration<double>(now - start).count();
                break;
            }
        }
    }
    return {static_cast<double>(count) / elapsed,
            static_cast<double>(count) * static_cast<double>(size) / elapsed};
}

Throughput channel_throughput(std::size_t size) {
    Shared* s = make_shared_block();
    const auto peer = fork_socket_child([&](int socket) {
        boost::asio::io_context io;
        auto ch = value_or_die(bus::Channel::adopt(io, bus::UniqueFd(socket)), "adopt");
        std::string payload(size, 'x');
        std::uint64_t seq = 0;
        bool done = false;
        std::function<void()> pump = [&] {
            while (!done) {
                if (s->stop.load(std::memory_order_relaxed)) {
                    std::memcpy(payload.data(), &end_marker, sizeof end_marker);
                    ch->send_bytes(payload);
                    ch->close();
                    done = true;
                    return;
                }
                std::memcpy(payload.data(), &seq, sizeof seq);
                ++seq;
                if (!ch->send_bytes(payload))
                    return; // past the high-water mark: on_drain resumes
            }
        };
        ch->on_drain(pump);
        pump();
        io.run();
        return 0;
    });
    boost::asio::io_context io;
    auto ch = value_or_die(bus::Channel::adopt(io, bus::UniqueFd(peer.socket)), "adopt");
    const auto budget = std::chrono::duration<double>(opt.seconds);
    std::optional<Clock::time_point> start;
    std::uint64_t count = 0, measured = 0, sink = 0;
    double elapsed = 0;
    ch->on_message([&](bus::Message& m) {
        const auto payload = m.payload();
        if (read_record(reinterpret_cast<const std::byte*>(payload.data()), payload.size(), sink) ==
            end_marker) {
            io.stop();
            return;
        }
        if (!start) {
            start = Clock::now();
            return;
        }
        ++count;
        if (!measured && (count & (size >= 1024 ? 0 : 63)) == 0) {
            const auto now = Clock::now();
            if (now - *start >= budget) {
                measured = count;
                elapsed = std::chrono::duration<double>(now - *start).count();
                s->stop.store(1, std::memory_order_relaxed);
            }
        }
    });
    io.run();
    reap(peer.pid);
    if (!measured)
        return {};
    return {static_cast<double>(measured) / elapsed,
            static_cast<double>(measured) * static_cast<double>(size) / elapsed};
}

// --- latency --------------------------------------------------------------------------------

struct Latency {
    double p50 = 0; // µs
    double p99 = 0;
};

constexpr std::size_t ping_size = 64;
constexpr int warmup = 2000;

// Ping-pong from the parent: `round(seq)` sends one record and waits for its echo.
template <class Round>
Latency ping(Round&& round) {
    for (int i = 0; i < warmup; ++i)
        round(static_cast<std::uint64_t>(i));
    std::vector<double> rtt;
    rtt.reserve(1 << 20);
    const auto start = Clock::now();
    const auto budget = std::chrono::duration<double>(opt.seconds);
    for (std::uint64_t seq = warmup; rtt.size() < (1u << 20); ++seq) {
        const auto t0 = Clock::now();
        round(seq);
        const auto t1 = Clock::now();
        rtt.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
        if (t1 - start >= budget)
            break;
    }
    round(end_marker);
    std::sort(rtt.begin(), rtt.end());
    return {rtt[rtt.size() / 2], rtt[rtt.size() * 99 / 100]};
}

Latency bus_latency(shm::Mode mode, bool spin) {
    Shared* s = make_shared_block();
    const std::string there = queue_name("ping"), back = queue_name("pong");
    const auto spin_for = spin ? shm::forever : 0ns;
    const pid_t child = fork_child([&] {
        wait_ready(*s);
        auto in = value_or_die(shm::Queue::open(there, shm::Role::consumer), "open");
        auto out = value_or_die(shm::Queue::open(back, shm::Role::producer), "open");
        in.set_spin(spin_for);
        out.set_spin(spin_for);
        for (;;) {
            auto r = in.front();
            if (!r)
                die("front", r.error());
            const auto seq = get_seq(r.value().data());
            auto slot = out.reserve(ping_size);
            if (!slot)
                die("reserve", slot.error());
            std::memcpy(slot.value().data(), r.value().data(), ping_size);
            in.release();
            out.commit();
            if (seq == end_marker)
                return 0;
        }
    });
    shm::CreateOptions to, from;
    to.mode = from.mode = mode;
    to.role = shm::Role::producer;
    from.role = shm::Role::consumer;
    auto out = value_or_die(shm::Queue::create(there, 1 << 16, to), "create");
    auto in = value_or_die(shm::Queue::create(back, 1 << 16, from), "create");
    out.set_spin(spin_for);
    in.set_spin(spin_for);
    s->ready.store(1, std::memory_order_release);
    const auto src = source(ping_size);
    auto result = ping([&](std::uint64_t seq) {
        auto slot = out.reserve(ping_size);
        if (!slot)
            die("reserve", slot.error());
        std::memcpy(slot.value().data(), src.data(), ping_size);
        put_seq(slot.value().data(), seq);
        out.commit();
        if (auto r = in.front(); !r)
            die("front", r.error());
        in.release();
    });
    reap(child);
    return result;
}

Latency mq_latency(bool spin) {
    Shared* s = make_shared_block();
    const std::string there = queue_name("mqping"), back = queue_name("mqpong");
    bip::message_queue::remove(there.c_str());
    bip::message_queue::remove(back.c_str());
    const pid_t child = fork_child([&] {
        wait_ready(*s);
        bip::message_queue in(bip::open_only, there.c_str());
        bip::message_queue out(bip::open_only, back.c_str());
        std::byte buf[ping_size];
        for (;;) {
            std::size_t got = 0;
            unsigned priority = 0;
            if (spin)
                while (!in.try_receive(buf, ping_size, got, priority))
                    cpu_relax();
            else
                in.receive(buf, ping_size, got, priority);
            out.send(buf, ping_size, 0);
            if (get_seq(buf) == end_marker)
                return 0;
        }
    });
    Latency result;
    {
        bip::message_queue out(bip::create_only, there.c_str(), 64, ping_size);
        bip::message_queue in(bip::create_only, back.c_str(), 64, ping_size);
        s->ready.store(1, std::memory_order_release);
        auto src = source(ping_size);
        std::byte buf[ping_size];
        result = ping([&](std::uint64_t seq) {
            put_seq(src.data(), seq);
            out.send(src.data(), ping_size, 0);
            std::size_t got = 0;
            unsigned priority = 0;
            if (spin)
                while (!in.try_receive(buf, ping_size, got, priority))
                    cpu_relax();
            else
                in.receive(buf, ping_size, got, priority);
        });
        reap(child);
    }
    bip::message_queue::remove(there.c_str());
    bip::message_queue::remove(back.c_str());
    return result;
}

Latency ring_latency() {
    const std::size_t slots = 1024;
    MiniRing* there = make_mini_ring(slots * ping_size);
    MiniRing* back = make_mini_ring(slots * ping_size);
    const pid_t child = fork_child([&] {
        MiniConsumer in(there, ping_size, slots);
        MiniProducer out(back, ping_size, slots);
        for (;;) {
            const std::byte* r = in.front();
            const auto seq = get_seq(r);
            std::memcpy(out.reserve(), r, ping_size);
            in.release();
            out.commit();
            if (seq == end_marker)
                return 0;
        }
    });
    MiniProducer out(there, ping_size, slots);
    MiniConsumer in(back, ping_size, slots);
    const auto src = source(ping_size);
    auto result = ping([&](std::uint64_t seq) {
        std::byte* slot = out.reserve();
        std::memcpy(slot, src.data(), ping_size);
        put_seq(slot, seq);
        out.commit();
        (void)in.front();
        in.release();
    });
    reap(child);
    ::munmap(there, sizeof(MiniRing) + slots * ping_size);
    ::munmap(back, sizeof(MiniRing) + slots * ping_size);
    return result;
}

Latency channel_latency(bool spin) {
    const auto peer = fork_socket_child([&](int socket) {
        boost::asio::io_context io;
        auto ch = value_or_die(bus::Channel::adopt(io, bus::UniqueFd(socket)), "adopt");
        bool done = false;
        ch->on_message([&](bus::Message& m) {
            const auto payload = m.payload();
            ch->send_bytes(payload);
            std::uint64_t seq;
            std::memcpy(&seq, payload.data(), sizeof seq);
            if (seq == end_marker) {
                ch->close();
                done = true;
            }
        });
        while (spin && !done)
            io.poll();
        io.run(); // until close() has flushed

        return 0;
    });
    boost::asio::io_context io;
    auto ch = value_or_die(bus::Channel::adopt(io, bus::UniqueFd(peer.socket)), "adopt");
    bool answered = false;
    ch->on_message([&](bus::Message&) { answered = true; });
    std::string payload(ping_size, 'p');
    auto result = ping([&](std::uint64_t seq) {
        std::memcpy(payload.data(), &seq, sizeof seq);
        answered = false;
        ch->send_bytes(payload);
        while (!answered) {
            if (spin)
                io.poll();
            else
                io.run_one();
        }
    });
    ch->close();
    io.run_for(100ms);
    reap(peer.pid);
    return result;
}

} // namespace

// --- the run --------------------------------------------------------------------------------

// A set-up call that fails (socketpair, fork) throws: end as die() does, not in std::terminate.
int main(int argc, char** argv) try {
    bench::OptionParser parser("shm-bench", opt);
    parser.add("--ring", "BYTES", [](std::string_view v) {
        opt.ring = std::bit_ceil(static_cast<std::size_t>(bench::to_integer(v, 1, 1LL << 40)));
    });
    parser.parse(argc, argv);
    bench::watchdog::install("shm-bench");
    bench::pin_to_cpu(1);

    const std::vector<std::size_t> sizes = {64, 1024, 64 * 1024};
    struct Peer {
        std::string key, label;
        std::function<Throughput(std::size_t)> run;
    };
    const std::vector<Peer> peers = {
        {"spsc", "bus spsc", [](std::size_t n) { return bus_throughput(shm::Mode::spsc, n); }},
        {"mpsc", "bus mpsc (1 producer)",
         [](std::size_t n) { return bus_throughput(shm::Mode::mpsc, n); }},
        {"mq", "boost message_queue", mq_throughput},
        {"ring", "minimal ring", ring_throughput},
        {"memcpy", "memcpy (1 thread)", memcpy_throughput},
        {"channel", "bus::Channel (socketpair)", channel_throughput},
    };

    // A value per round, by "tput.PEER.SIZE".
    std::map<std::string, bench::Samples> msgs, bytes;
    std::fprintf(stderr, "shm-bench: %d round(s) of %.2f s per case, ring %zu bytes\n", opt.rounds,
                 opt.seconds, opt.ring);
    std::printf("== Throughput: one producer process, one consumer process reading every byte "
                "(median of %d rounds)\n",
                opt.rounds);
    bench::Table throughput({{"peer", bench::Align::left}, {"size"}, {"msgs/s"}, {"GB/s"}});
    for (std::size_t size : sizes) {
        for (int r = 1; r <= opt.rounds; ++r) {
            for (const auto& peer : peers) {
                const std::string key = "tput." + peer.key + "." + bench::size_name(size);
                if (!opt.selected(key))
                    continue;
                bench::watchdog::arm_case(key, opt.seconds);
                const auto t = peer.run(size);
                msgs[key].values.push_back(t.msgs);
                bytes[key].values.push_back(t.bytes);
                std::fprintf(stderr, "shm-bench: round %d/%d: %-22s %s msgs/s\n", r, opt.rounds,
                             key.c_str(), bench::thousands(t.msgs).c_str());
            }
        }
        for (const auto& peer : peers) {
            const std::string key = "tput." + peer.key + "." + bench::size_name(size);
            if (!msgs.count(key))
                continue;
            throughput.add_row({peer.label, bench::size_name(size),
                                bench::thousands(msgs[key].median()),
                                bench::fixed(bytes[key].median() / 1e9, 2)});
        }
    }
    bench::watchdog::disarm();
    throughput.print(stdout);
    std::fflush(stdout);

    struct LatencyCase {
        std::string key, label, waits;
        std::function<Latency()> run;
    };
    const std::vector<LatencyCase> latency_cases = {
        {"spsc.spin", "bus spsc", "spin", [] { return bus_latency(shm::Mode::spsc, true); }},
        {"mpsc.spin", "bus mpsc", "spin", [] { return bus_latency(shm::Mode::mpsc, true); }},
        {"ring.spin", "minimal ring", "spin", ring_latency},
        {"mq.spin", "boost message_queue", "spin", [] { return mq_latency(true); }},
        {"channel.spin", "bus::Channel (socketpair)", "spin", [] { return channel_latency(true); }},
        {"spsc.sleep", "bus spsc", "sleep", [] { return bus_latency(shm::Mode::spsc, false); }},
        {"mpsc.sleep", "bus mpsc", "sleep", [] { return bus_latency(shm::Mode::mpsc, false); }},
        {"mq.sleep", "boost message_queue", "sleep", [] { return mq_latency(false); }},
        {"channel.sleep", "bus::Channel (socketpair)", "sleep",
         [] { return channel_latency(false); }},
    };
    // A value per round, by "rtt.CASE".
    std::map<std::string, bench::Samples> p50, p99;
    for (int r = 1; r <= opt.rounds; ++r) {
        for (const auto& c : latency_cases) {
            const std::string key = "rtt." + c.key;
            if (!opt.selected(key))
                continue;
            bench::watchdog::arm_case(key, opt.seconds);
            const auto l = c.run();
            p50[key].values.push_back(l.p50);
            p99[key].values.push_back(l.p99);
            std::fprintf(stderr, "shm-bench: round %d/%d: %-22s p50 %.2f µs, p99 %.2f µs\n", r,
                         opt.rounds, key.c_str(), l.p50, l.p99);
        }
    }
    bench::watchdog::disarm();
    std::printf("\n== Ping-pong round trip, %zu B records, µs (median of %d rounds)\n", ping_size,
                opt.rounds);
    bench::Table latency({{"peer", bench::Align::left}, {"waits"}, {"p50"}, {"p99"}});
    for (const auto& c : latency_cases) {
        const std::string key = "rtt." + c.key;
        if (!p50.count(key))
            continue;
        latency.add_row({c.label, c.waits, bench::fixed(p50[key].median(), 2),
                         bench::fixed(p99[key].median(), 2)});
    }
    latency.print(stdout);
    std::fflush(stdout);

    // The bars, for each of bus's modes.
    std::printf("\n");
    auto bar = [](const std::string& name, const std::map<std::string, bench::Samples>& m,
                  const std::string& a, const std::string& b, const std::string& target,
                  bool at_most) {
        bench::print_ratio_bar(stdout, name, bench::median_of(m, a), bench::median_of(m, b), target,
                               at_most);
    };
    for (std::string mode : {"spsc", "mpsc"}) {
        bar("shm." + mode + ".64B.vs_ring", msgs, "tput." + mode + ".64B", "tput.ring.64B", "0.50",
            false);
        bar("shm." + mode + ".64B.vs_message_queue", msgs, "tput." + mode + ".64B", "tput.mq.64B",
            "3", false);
        bar("shm." + mode + ".64KiB.vs_memcpy", bytes, "tput." + mode + ".64KiB",
            "tput.memcpy.64KiB", "0.50", false);
        bar("shm." + mode + ".rtt_p50.spin.vs_ring", p50, "rtt." + mode + ".spin", "rtt.ring.spin",
            "2", true);
        bar("shm." + mode + ".rtt_p50.sleep.vs_message_queue", p50, "rtt." + mode + ".sleep",
            "rtt.mq.sleep", "1", true);
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "shm-bench: %s\n", e.what());
    return 2;
}
