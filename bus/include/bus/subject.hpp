// Subjects and patterns (DESIGN.md "Delivery semantics"): dot-separated tokens; in a pattern
// `*` matches exactly one token and `>` (last token only) matches one or more.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace bus {

inline constexpr std::size_t max_subject_length = 512;
inline constexpr std::size_t max_subject_tokens = 32;

// A concrete subject: non-empty tokens of printable ASCII, no whitespace, no wildcards.
bool valid_subject(std::string_view subject) noexcept;
// A subscription pattern: like a subject, but a token may be `*`, and the last may be `>`.
bool valid_pattern(std::string_view pattern) noexcept;
// Whether `pattern` matches `subject` (both assumed valid).
bool subject_matches(std::string_view pattern, std::string_view subject) noexcept;

// Whether every subject `pattern` matches is also matched by `allowed` (both valid patterns):
// how access rules decide whether a subscription stays within what a client may see.
bool pattern_covers(std::string_view allowed, std::string_view pattern) noexcept;

} // namespace bus
