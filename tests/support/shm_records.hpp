// Records for the shared-memory queue stress tests: each carries its producer, a per-producer
// sequence number and a checksum over everything, with a size and content derived from
// (producer, seq), so the consumer can tell a lost, duplicated, reordered or torn record.
#pragma once

#include "core/fnv1a.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

namespace bus::test {

struct RecordHead {
    std::uint32_t producer;
    std::uint32_t size; // of the whole record
    std::uint64_t seq;
    std::uint64_t checksum; // FNV-1a of the record with this field zero
};

inline std::uint64_t mix(std::uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

// Record sizes spread over [sizeof(RecordHead), sizeof(RecordHead) + spread).
inline std::size_t record_size(std::uint32_t producer, std::uint64_t seq, std::size_t spread) {
    return sizeof(RecordHead) + mix(seq * 131 + producer) % spread;
}

inline void write_record(std::span<std::byte> out, std::uint32_t producer, std::uint64_t seq) {
    RecordHead head{producer, static_cast<std::uint32_t>(out.size()), seq, 0};
    std::memcpy(out.data(), &head, sizeof head);
    std::uint64_t x = mix(seq ^ (std::uint64_t{producer} << 48));
    for (std::size_t i = sizeof head; i < out.size(); ++i) {
        out[i] = static_cast<std::byte>(x);
        x = x * 6364136223846793005ull + 1442695040888963407ull;
    }
    head.checksum = bus::detail::Fnv1a().add(out).value();
    std::memcpy(out.data(), &head, sizeof head);
}

// Empty when `record` is intact; else what is wrong with it.
inline std::string check_record(std::span<const std::byte> record, RecordHead& head) {
    if (record.size() < sizeof head)
        return "record of " + std::to_string(record.size()) + " bytes";
    std::memcpy(&head, record.data(), sizeof head);
    if (head.size != record.size())
        return "size field " + std::to_string(head.size) + " in a record of " +
               std::to_string(record.size());
    std::vector<std::byte> copy(record.begin(), record.end());
    RecordHead zeroed = head;
    zeroed.checksum = 0;
    std::memcpy(copy.data(), &zeroed, sizeof zeroed);
    if (bus::detail::Fnv1a().add(copy).value() != head.checksum)
        return "checksum mismatch (producer " + std::to_string(head.producer) + ", seq " +
               std::to_string(head.seq) + ")";
    return {};
}

// Per-producer order: every record must be the next of its producer.
class SequenceCheck {
public:
    explicit SequenceCheck(std::size_t producers) : next_(producers, 0) {}

    // Empty when `head` is the next record of its producer.
    std::string take(const RecordHead& head) {
        if (head.producer >= next_.size())
            return "unknown producer " + std::to_string(head.producer);
        auto& next = next_[head.producer];
        if (head.seq != next)
            return "producer " + std::to_string(head.producer) + ": expected seq " +
                   std::to_string(next) + ", got " + std::to_string(head.seq) +
                   (head.seq < next ? " (duplicate or reordered)" : " (lost records)");
        ++next;
        return {};
    }
    std::uint64_t next(std::size_t producer) const { return next_[producer]; }

private:
    std::vector<std::uint64_t> next_;
};

// Stress sizes: the default keeps every test run short; BUS_SHM_STRESS_RECORDS raises it.
inline std::uint64_t stress_records(std::uint64_t by_default) {
    if (const char* env = std::getenv("BUS_SHM_STRESS_RECORDS"))
        return std::strtoull(env, nullptr, 10);
    return by_default;
}

} // namespace bus::test
