// A subject's or pattern's tokens, for the matchers in subject.cpp and the router's trie.
#pragma once

#include "bus/subject.hpp"

#include <cstddef>
#include <string_view>

namespace bus {

// Splits on '.', without allocating for up to max_subject_tokens tokens.
class SubjectTokens {
public:
    explicit SubjectTokens(std::string_view subject) noexcept;
    std::size_t size() const noexcept { return count_; }
    std::string_view operator[](std::size_t i) const noexcept { return tokens_[i]; }

private:
    std::string_view tokens_[max_subject_tokens + 1];
    std::size_t count_ = 0;
};

} // namespace bus
