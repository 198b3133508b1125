// A shared-memory queue whose segment a broken or malicious peer has written over. A real
// queue is made (the consumer here, a producer opened beside it), one record goes through to
// learn where the ring is mapped, and then the input is written into the segment file: the
// words the producer owns (tail, produced, the last record's name) and the
// consumer's head, the record headers and the ring. The consumer must then give records that lie
// inside the ring, or an error, and never crash or hang; the producer must refuse or write inside
// the ring; `bus shm ls`'s inspect() must describe the segment without trusting it.
//
// Input: [mode][tail 8][head 8][produced 8][last 8][headers and ring...]
#include "shm/layout.hpp"
#include "shm/segment.hpp"

#include <bus/shm_queue.hpp>

#include <cstddef>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <unistd.h>

namespace shm = bus::shm;

namespace {

constexpr std::size_t capacity = 4096;

std::span<const std::byte> bytes(const char* s) {
    return {reinterpret_cast<const std::byte*>(s), std::strlen(s)};
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    constexpr std::size_t words = 33; // the mode and the words before the headers
    if (size < words)
        return 0;
    const std::string name = "fuzz." + std::to_string(::getpid());
    shm::CreateOptions options;
    options.mode = data[0] & 1 ? shm::Mode::mpsc : shm::Mode::spsc;
    options.role = shm::Role::consumer;
    auto consumer = shm::Queue::create(name, capacity, options);
    if (!consumer)
        __builtin_trap(); // a fresh name on a working /dev/shm
    auto& c = consumer.value();
    auto producer = shm::Queue::open(name, shm::Role::producer);
    if (!producer)
        __builtin_trap();
    auto& p = producer.value();

    // Where the ring is: the first record starts at position 0.
    if (p.try_push(bytes("first")))
        __builtin_trap();
    auto first = c.try_front();
    if (!first)
        __builtin_trap();
    const std::byte* ring = first.value().data();
    c.release();

    // The peer's writing.
    const int fd = ::open(("/dev/shm/bus." + name).c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0)
        __builtin_trap();
    const auto word = [&](std::size_t at, std::size_t n, std::size_t offset) {
        (void)::pwrite(fd, data + at, n, static_cast<off_t>(offset));
    };
    word(1, 8, offsetof(shm::detail::Control, tail));
    word(9, 8, offsetof(shm::detail::Control, head));
    word(17, 8, offsetof(shm::detail::Control, produced));
    word(25, 8, offsetof(shm::detail::Control, last));
    const std::size_t rest =
        std::min<std::size_t>(size - words, shm::detail::headers_size(capacity) + capacity);
    (void)::pwrite(fd, data + words, rest, static_cast<off_t>(shm::detail::control_size()));
    ::close(fd);

    // The consumer: whatever it hands out lies in the ring (mapped twice, back to back).
    for (int i = 0; i < 64; ++i) {
        auto r = c.try_front();
        if (!r)
            break;
        const auto span = r.value();
        if (span.data() < ring || span.data() + span.size() > ring + 2 * capacity)
            __builtin_trap();
        std::uint64_t sum = 0;
        for (std::byte b : span)
            sum += static_cast<std::uint8_t>(b);
        (void)sum;
        c.release();
    }
    (void)c.stats();
    // The producer reads the consumer's head: it must refuse rather than overwrite.
    (void)p.try_push(bytes("after"));
    (void)shm::inspect(name);
    (void)shm::remove(name, true);
    return 0;
}
