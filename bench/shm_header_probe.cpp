// Experiment for issue 5: what a record header costs a 64 B SPSC ring by where it lives.
//   ring    64 B slots, no header (the bench's minimal ring)
//   inline  16 B header + 64 B payload in a 128 B slot (bus's format today)
//   side16  64 B payload slots, 16 B headers in a side array (4 per line)
//   side8   64 B payload slots,  8 B headers in a side array (8 per line)
// One producer process, one consumer process, tail/head published per record with cached
// copies, pause-spin (the structure of shm_bench.cpp's minimal ring); the consumer reads every
// payload byte. Prints msgs/s and the ratio to `ring` for each rep, the layouts interleaved.
// Not a bar: the measurement behind the next segment format of issue 5 (bench/RESULTS.md,
// "Where the record header goes").
//
//   build-bench/bin/shm-header-probe [REPS]
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

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
struct Hdr8 {
    std::atomic<std::uint64_t> control; // length in the low 32 bits, state above
};

constexpr std::size_t ring_bytes = 4 << 20;
constexpr std::size_t payload = 64;

template <int Variant>
double run(double seconds) {
    const std::size_t stride = Variant == 1 ? 128 : 64;
    const std::size_t slots = ring_bytes / stride;
    const std::size_t side = Variant == 2 ? 16 * slots : Variant == 3 ? 8 * slots : 0;
    auto* mem =
        static_cast<char*>(::mmap(nullptr, sizeof(Ctl) + side + ring_bytes, PROT_READ | PROT_WRITE,
                                  MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0));
    auto* ctl = new (mem) Ctl{};
    char* side_base = mem + sizeof(Ctl);
    char* data = side_base + side;
    const std::uint64_t mask = slots - 1;
    const pid_t child = ::fork();
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
            if (Variant == 1) {
                auto* h = reinterpret_cast<Hdr16*>(slot);
                std::memcpy(slot + 16, src, payload);
                std::memcpy(slot + 16, &seq, 8);
                h->length = payload;
                h->control.store((2ull << 32) | stride, std::memory_order_relaxed);
            } else {
                std::memcpy(slot, src, payload);
                std::memcpy(slot, &seq, 8);
                if (Variant == 2) {
                    auto* h = reinterpret_cast<Hdr16*>(side_base + i * 16);
                    h->length = payload;
                    h->control.store((2ull << 32) | stride, std::memory_order_relaxed);
                } else if (Variant == 3) {
                    auto* h = reinterpret_cast<Hdr8*>(side_base + i * 8);
                    h->control.store((2ull << 32) | payload, std::memory_order_relaxed);
                }
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
        if (Variant == 1) {
            auto* h = reinterpret_cast<const Hdr16*>(slot);
            const auto c = h->control.load(std::memory_order_acquire);
            len = h->length;
            if ((c >> 32) != 2)
                std::abort();
            slot += 16;
        } else if (Variant == 2) {
            auto* h = reinterpret_cast<const Hdr16*>(side_base + i * 16);
            const auto c = h->control.load(std::memory_order_acquire);
            len = h->length;
            if ((c >> 32) != 2)
                std::abort();
        } else if (Variant == 3) {
            auto* h = reinterpret_cast<const Hdr8*>(side_base + i * 8);
            const auto c = h->control.load(std::memory_order_acquire);
            len = static_cast<std::uint32_t>(c);
            if ((c >> 32) != 2)
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
    ::waitpid(child, nullptr, 0);
    ::munmap(mem, sizeof(Ctl) + side + ring_bytes);
    if (sink == 42)
        std::puts("");
    return static_cast<double>(count) / elapsed;
}

int main(int argc, char** argv) {
    const int reps = argc > 1 ? std::atoi(argv[1]) : 5;
    const char* names[] = {"ring", "inline", "side16", "side8"};
    double (*fns[])(double) = {run<0>, run<1>, run<2>, run<3>};
    for (int r = 0; r < reps; ++r) {
        double v[4];
        for (int k = 0; k < 4; ++k)
            v[k] = fns[k](0.5);
        std::printf("rep %d:", r);
        for (int k = 0; k < 4; ++k)
            std::printf("  %s %6.1fM (%.2f)", names[k], v[k] / 1e6, v[k] / v[0]);
        std::printf("\n");
        std::fflush(stdout);
    }
}
