// Experiment for issue 5: what a record header costs a 64 B SPSC ring by where it lives, and
// what the producer's prefetch (bus/detail/shm_hot.hpp, prefetch_for_write) does to each.
//   ring       64 B slots, no header (the bench's minimal ring)
//   inline     16 B header + 64 B payload in a 128 B slot (bus's segment format 2, until stop 14)
//   side16     64 B payload slots, 16 B headers in a side array (4 per line; format 3, bus's now)
//   +pf        the same, the producer asking for the line 1 KiB ahead for writing, as bus does
// One producer process, one consumer process, tail/head published per record with cached
// copies, pause-spin (the structure of shm_bench.cpp's minimal ring); the consumer reads every
// payload byte. Prints msgs/s and the ratio to `ring` for each round, the layouts interleaved.
// Not a bar: the measurement behind the segment format (bench/RESULTS.md, "Where the record
// header goes").
//
//   build-bench/bin/shm-header-probe [--seconds S] [--rounds N]
// Each layout runs S seconds (default 0.5) in each of N rounds (default 5). No --only: the
// ratios are to `ring`, which every round needs.
#include "common/options.hpp"
#include "common/process.hpp"
#include "common/watchdog.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <sys/mman.h>
#include <unistd.h>

namespace {

struct alignas(64) Ctl {
    alignas(64) std::atomic<std::uint64_t> head;
    alignas(64) std::atomic<std::uint64_t> tail;
    alignas(64) std::atomic<int> stop;
    alignas(64) std::atomic<int> ready;
};
struct Hdr16 {
    std::atomic<std::uint64_t> control;
    std::uint32_t length, unused;
};

enum class Layout { ring, inline16, side16 };

constexpr std::size_t ring_bytes = 4 << 20;
constexpr std::size_t payload = 64;
constexpr std::uint64_t committed = 2ull << 32;

template <Layout L, bool Prefetch>
double run(double seconds) {
    const std::size_t stride = L == Layout::inline16 ? 128 : 64;
    const std::size_t slots = ring_bytes / stride;
    const std::size_t side = L == Layout::side16 ? 16 * slots : 0;
    const std::uint64_t ahead = 1024 / stride; // the prefetch distance, in slots
    const std::size_t bytes = sizeof(Ctl) + side + ring_bytes;
    auto* mem = static_cast<char*>(::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                                          MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0));
    if (mem == MAP_FAILED) {
        std::perror("mmap");
        std::exit(2);
    }
    auto* ctl = new (mem) Ctl{};
    char* side_base = mem + sizeof(Ctl);
    char* data = side_base + side;
    const std::uint64_t mask = slots - 1;
    // The producer dies with the consumer (ForkOptions::death_signal): a consumer that aborts
    // takes it along.
    const pid_t child = bench::fork_process();
    if (child == 0) {
        char src[payload];
        std::memset(src, 'x', payload);
        std::uint64_t tail = 0, head_cache = 0, seq = 0;
        ctl->ready.store(1);
        while (!ctl->stop.load(std::memory_order_relaxed)) {
            while (tail - head_cache >= slots) {
                head_cache = ctl->head.load(std::memory_order_acquire);
                if (tail - head_cache >= slots) {
                    if (ctl->stop.load(std::memory_order_relaxed))
                        std::_Exit(0);
                    __builtin_ia32_pause();
                }
            }
            const std::uint64_t i = tail & mask;
            char* slot = data + i * stride;
            if (Prefetch && tail + ahead - head_cache < slots)
                __builtin_prefetch(data + ((tail + ahead) & mask) * stride, 1);
            Hdr16* h = nullptr;
            if (L == Layout::inline16) {
                h = reinterpret_cast<Hdr16*>(slot);
                slot += 16;
            } else if (L == Layout::side16) {
                h = reinterpret_cast<Hdr16*>(side_base + i * 16);
            }
            std::memcpy(slot, src, payload);
            std::memcpy(slot, &seq, 8);
            if (h) {
                h->length = payload;
                h->control.store(committed | stride, std::memory_order_relaxed);
            }
            ++seq;
            ctl->tail.store(++tail, std::memory_order_release);
        }
        std::_Exit(0);
    }
    while (!ctl->ready.load())
        ;
    std::uint64_t head = 0, tail_cache = 0, sink = 0, count = 0, expect = 0;
    const auto start = std::chrono::steady_clock::now();
    double elapsed = 0;
    for (;;) {
        while (head == tail_cache) {
            tail_cache = ctl->tail.load(std::memory_order_acquire);
            if (head == tail_cache)
                __builtin_ia32_pause();
        }
        const std::uint64_t i = head & mask;
        const char* slot = data + i * stride;
        std::uint32_t len = payload;
        const Hdr16* h = nullptr;
        if (L == Layout::inline16) {
            h = reinterpret_cast<const Hdr16*>(slot);
            slot += 16;
        } else if (L == Layout::side16) {
            h = reinterpret_cast<const Hdr16*>(side_base + i * 16);
        }
        if (h) {
            const auto c = h->control.load(std::memory_order_acquire);
            len = h->length;
            if ((c & ~std::uint64_t{0xffffffff}) != committed)
                std::abort();
        }
        std::uint64_t s;
        std::memcpy(&s, slot, 8);
        if (s != expect++)
            std::abort();
        for (std::uint32_t k = 0; k < len; k += 8) {
            std::uint64_t w;
            std::memcpy(&w, slot + k, 8);
            sink += w;
        }
        ctl->head.store(++head, std::memory_order_release);
        if ((++count & 1023) == 0) {
            elapsed =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            if (elapsed >= seconds)
                break;
        }
    }
    ctl->stop.store(1);
    bench::wait_child(child);
    ::munmap(mem, bytes);
    if (sink == 42)
        std::puts("");
    return static_cast<double>(count) / elapsed;
}

} // namespace

// A fork that fails throws: end with a message and 2, not in std::terminate.
int main(int argc, char** argv) try {
    bench::Options options;
    options.seconds = 0.5;
    options.rounds = 5;
    bench::OptionParser("shm-header-probe", options, bench::OptionParser::without_only)
        .parse(argc, argv);
    bench::watchdog::install("shm-header-probe");
    struct Case {
        const char* name;
        double (*fn)(double);
    };
    const Case cases[] = {
        {"ring", run<Layout::ring, false>},       {"inline", run<Layout::inline16, false>},
        {"side16", run<Layout::side16, false>},   {"inline+pf", run<Layout::inline16, true>},
        {"side16+pf", run<Layout::side16, true>},
    };
    constexpr int n = sizeof cases / sizeof cases[0];
    for (int r = 0; r < options.rounds; ++r) {
        double v[n];
        for (int k = 0; k < n; ++k) {
            bench::watchdog::arm_case(cases[k].name, options.seconds);
            v[k] = cases[k].fn(options.seconds);
        }
        bench::watchdog::disarm();
        std::printf("rep %d:", r);
        for (int k = 0; k < n; ++k)
            std::printf("  %s %6.1fM (%.2f)", cases[k].name, v[k] / 1e6, v[k] / v[0]);
        std::printf("\n");
        std::fflush(stdout);
    }
} catch (const std::exception& e) {
    std::fprintf(stderr, "shm-header-probe: %s\n", e.what());
    return 2;
}
