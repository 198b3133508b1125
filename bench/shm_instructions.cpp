// Instructions per record of bus::shm::Queue beside a minimal SPSC ring, counted by callgrind
// (repeatable, unlike timings on a shared machine; perf counters are not available here).
// One thread alternates batches of 32 records of 64 B: produce, then consume. Run through
// bench/shm-instructions, which runs this under valgrind for each of `ring`, `spsc`, `mpsc`
// and divides the inclusive cost of the produce and consume functions by the record count.
#include <bus/shm_queue.hpp>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include <sys/mman.h>
#include <unistd.h>

namespace {

namespace shm = bus::shm;

constexpr int batch = 32;
constexpr std::size_t record = 64;
constexpr int records = 200000; // bench/shm-instructions divides by this

// The limit: fixed-size slots, no header, no liveness, no waiting but a spin.
struct MiniRing {
    alignas(64) std::atomic<std::uint64_t> head;
    alignas(64) std::atomic<std::uint64_t> tail;
    alignas(64) std::byte data[1];
};

struct MiniProducer {
    MiniRing* r;
    std::size_t mask, slots;
    std::uint64_t tail = 0, head_cache = 0;
    std::byte* reserve() {
        while (tail - head_cache >= slots)
            head_cache = r->head.load(std::memory_order_acquire);
        return r->data + (tail & mask) * record;
    }
    void commit() { r->tail.store(++tail, std::memory_order_release); }
};

struct MiniConsumer {
    MiniRing* r;
    std::size_t mask;
    std::uint64_t head = 0, tail_cache = 0;
    const std::byte* front() {
        while (head == tail_cache)
            tail_cache = r->tail.load(std::memory_order_acquire);
        return r->data + (head & mask) * record;
    }
    void release() { r->head.store(++head, std::memory_order_release); }
};

std::uint64_t sink;

[[gnu::noinline]] void ring_produce(MiniProducer& p, std::uint64_t seq) {
    for (int i = 0; i < batch; ++i) {
        const std::uint64_t v = seq + static_cast<std::uint64_t>(i);
        std::memcpy(p.reserve(), &v, sizeof v);
        p.commit();
    }
}

[[gnu::noinline]] void ring_consume(MiniConsumer& c) {
    for (int i = 0; i < batch; ++i) {
        std::uint64_t v;
        std::memcpy(&v, c.front(), sizeof v);
        sink += v;
        c.release();
    }
}

[[gnu::noinline]] void bus_produce(shm::Queue& q, std::uint64_t seq) {
    for (int i = 0; i < batch; ++i) {
        auto slot = q.reserve(record);
        if (!slot)
            std::abort();
        const std::uint64_t v = seq + static_cast<std::uint64_t>(i);
        std::memcpy(slot.value().data(), &v, sizeof v);
        q.commit();
    }
}

[[gnu::noinline]] void bus_consume(shm::Queue& q) {
    for (int i = 0; i < batch; ++i) {
        auto r = q.front();
        if (!r)
            std::abort();
        std::uint64_t v;
        std::memcpy(&v, r.value().data(), sizeof v);
        sink += v;
        q.release();
    }
}

} // namespace

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "spsc";
    constexpr std::size_t ring_bytes = 1 << 20;
    if (mode == "ring") {
        void* memory = ::mmap(nullptr, sizeof(MiniRing) + ring_bytes, PROT_READ | PROT_WRITE,
                              MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (memory == MAP_FAILED)
            return 1;
        auto* ring = new (memory) MiniRing{};
        MiniProducer p{ring, ring_bytes / record - 1, ring_bytes / record};
        MiniConsumer c{ring, ring_bytes / record - 1};
        for (int k = 0; k < records / batch; ++k) {
            ring_produce(p, static_cast<std::uint64_t>(k) * batch);
            ring_consume(c);
        }
    } else if (mode == "spsc" || mode == "mpsc") {
        shm::CreateOptions options;
        options.mode = mode == "mpsc" ? shm::Mode::mpsc : shm::Mode::spsc;
        const std::string name = "bench.instr." + std::to_string(::getpid());
        auto p = shm::Queue::create(name, ring_bytes, options);
        auto c = shm::Queue::open(name, shm::Role::consumer);
        if (!p || !c)
            return 1;
        p.value().set_spin(shm::forever);
        c.value().set_spin(shm::forever);
        for (int k = 0; k < records / batch; ++k) {
            bus_produce(p.value(), static_cast<std::uint64_t>(k) * batch);
            bus_consume(c.value());
        }
    } else {
        std::fprintf(stderr, "usage: shm-instructions ring|spsc|mpsc\n");
        return 2;
    }
    std::printf("%llu\n", static_cast<unsigned long long>(sink));
    return 0;
}
