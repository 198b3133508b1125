#include "bus/subject.hpp"

#include "core/subject_tokens.hpp"

namespace bus {
namespace {

bool valid_token_char(char c) noexcept {
    return c > ' ' && c < 0x7f && c != '.' && c != '*' && c != '>';
}

// Shared by subjects and patterns: token structure, length and characters.
bool valid(std::string_view s, bool wildcards) noexcept {
    if (s.empty() || s.size() > max_subject_length)
        return false;
    std::size_t tokens = 0;
    std::size_t start = 0;
    while (true) {
        const std::size_t dot = s.find('.', start);
        const std::string_view token =
            s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
        if (token.empty() || ++tokens > max_subject_tokens)
            return false;
        const bool last = dot == std::string_view::npos;
        if (wildcards && (token == "*" || (token == ">" && last))) {
            // a whole-token wildcard
        } else {
            for (char c : token)
                if (!valid_token_char(c))
                    return false;
        }
        if (last)
            return true;
        start = dot + 1;
    }
}

} // namespace

bool valid_subject(std::string_view subject) noexcept {
    return valid(subject, false);
}
bool valid_pattern(std::string_view pattern) noexcept {
    return valid(pattern, true);
}

SubjectTokens::SubjectTokens(std::string_view subject) noexcept {
    std::size_t start = 0;
    while (count_ <= max_subject_tokens) {
        const std::size_t dot = subject.find('.', start);
        if (dot == std::string_view::npos) {
            tokens_[count_++] = subject.substr(start);
            return;
        }
        tokens_[count_++] = subject.substr(start, dot - start);
        start = dot + 1;
    }
}

bool subject_matches(std::string_view pattern, std::string_view subject) noexcept {
    const SubjectTokens p(pattern), s(subject);
    for (std::size_t i = 0; i < p.size(); ++i) {
        if (p[i] == ">")
            return s.size() > i;
        if (i >= s.size() || (p[i] != "*" && p[i] != s[i]))
            return false;
    }
    return p.size() == s.size();
}

bool pattern_covers(std::string_view allowed, std::string_view pattern) noexcept {
    const SubjectTokens a(allowed), p(pattern);
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (a[i] == ">")
            return i < p.size(); // one or more tokens, whatever p has there
        if (i >= p.size() || p[i] == ">")
            return false; // p reaches deeper than a fixed-length a
        if (a[i] == "*")
            continue; // p's token is one token, literal or *
        if (p[i] == "*" || a[i] != p[i])
            return false;
    }
    return a.size() == p.size();
}

} // namespace bus
