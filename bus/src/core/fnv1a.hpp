// 64-bit FNV-1a, the one copy: the shared-memory layout fingerprint, the cluster's watched-file
// hash and the shm stress tests' record checksum. Not for anything an adversary chooses: it is a
// fast, well-spread hash, not a cryptographic one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace bus::detail {

// Fed in pieces (a byte, a string, a span of bytes); value() is the hash of all fed so far.
class Fnv1a {
public:
    static constexpr std::uint64_t offset_basis = 14695981039346656037ull;
    static constexpr std::uint64_t prime = 1099511628211ull;

    constexpr Fnv1a& add(std::uint8_t byte) noexcept {
        h_ = (h_ ^ byte) * prime;
        return *this;
    }
    constexpr Fnv1a& add(std::string_view bytes) noexcept {
        for (const unsigned char c : bytes)
            add(c);
        return *this;
    }
    constexpr Fnv1a& add(std::span<const std::byte> bytes) noexcept {
        for (const auto b : bytes)
            add(static_cast<std::uint8_t>(b));
        return *this;
    }
    constexpr std::uint64_t value() const noexcept { return h_; }

private:
    std::uint64_t h_ = offset_basis;
};

// The published test vectors, so a wrong constant cannot come back unnoticed.
static_assert(Fnv1a().value() == 0xcbf29ce484222325ull);
static_assert(Fnv1a().add(std::string_view("a")).value() == 0xaf63dc4c8601ec8cull);
static_assert(Fnv1a().add(std::string_view("foobar")).value() == 0x85944171f73967e8ull);

} // namespace bus::detail
