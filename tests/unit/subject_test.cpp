#include <bus/subject.hpp>

#include "broker/subject_trie.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

namespace {

TEST(Subject, Validation) {
    EXPECT_TRUE(bus::valid_subject("orders.eu.created"));
    EXPECT_TRUE(bus::valid_subject("a"));
    EXPECT_TRUE(bus::valid_subject("$sys.client.connected"));
    for (const char* bad : {"", ".", "a.", ".a", "a..b", "a b", "a.*", "a.>", "tab\t", "é"})
        EXPECT_FALSE(bus::valid_subject(bad)) << bad;
    EXPECT_FALSE(bus::valid_subject(std::string(bus::max_subject_length + 1, 'a')));
    std::string deep = "a";
    for (std::size_t i = 1; i < bus::max_subject_tokens; ++i)
        deep += ".a";
    EXPECT_TRUE(bus::valid_subject(deep));
    EXPECT_FALSE(bus::valid_subject(deep + ".a"));

    EXPECT_TRUE(bus::valid_pattern("orders.*.created"));
    EXPECT_TRUE(bus::valid_pattern("metrics.>"));
    EXPECT_TRUE(bus::valid_pattern(">"));
    EXPECT_TRUE(bus::valid_pattern("*"));
    for (const char* bad : {"a.>.b", "a*", "a.*b", "a.>b", "a..*", ""})
        EXPECT_FALSE(bus::valid_pattern(bad)) << bad;
}

TEST(Subject, Matching) {
    EXPECT_TRUE(bus::subject_matches("orders.*.created", "orders.eu.created"));
    EXPECT_FALSE(bus::subject_matches("orders.*.created", "orders.eu.west.created"));
    EXPECT_TRUE(bus::subject_matches("metrics.>", "metrics.cpu"));
    EXPECT_TRUE(bus::subject_matches("metrics.>", "metrics.cpu.core0"));
    EXPECT_FALSE(bus::subject_matches("metrics.>", "metrics"));
    EXPECT_TRUE(bus::subject_matches(">", "anything.at.all"));
    EXPECT_TRUE(bus::subject_matches("a.b", "a.b"));
    EXPECT_FALSE(bus::subject_matches("a.b", "a.b.c"));
    EXPECT_FALSE(bus::subject_matches("a.b.c", "a.b"));
}

TEST(Subject, Covers) {
    EXPECT_TRUE(bus::pattern_covers("orders.>", "orders.*.created"));
    EXPECT_TRUE(bus::pattern_covers("orders.>", "orders.>"));
    EXPECT_TRUE(bus::pattern_covers("orders.*", "orders.eu"));
    EXPECT_TRUE(bus::pattern_covers(">", "anything.>"));
    EXPECT_FALSE(bus::pattern_covers("orders.*", "orders.>"));
    EXPECT_FALSE(bus::pattern_covers("orders.eu", "orders.*"));
    EXPECT_FALSE(bus::pattern_covers("orders.>", "orders"));
    EXPECT_FALSE(bus::pattern_covers("orders.>", ">"));
    // Against the reference: covers(a, p) means every subject p matches, a matches too.
    const std::vector<std::string> pats = {"a", "a.b",   "a.*",   "*.b", "a.>",   ">",
                                           "*", "a.*.c", "a.b.c", "*.*", "a.b.>", "*.>"};
    const std::vector<std::string> subjects = {"a",     "b",     "a.b",     "a.c",  "b.b",
                                               "a.b.c", "a.x.c", "a.b.c.d", "x.y.z"};
    for (const auto& a : pats)
        for (const auto& p : pats) {
            bool implied = true;
            for (const auto& s : subjects)
                if (bus::subject_matches(p, s) && !bus::subject_matches(a, s))
                    implied = false;
            if (bus::pattern_covers(a, p)) {
                EXPECT_TRUE(implied) << a << " claims to cover " << p;
            }
        }
}

TEST(SubjectTrie, FindsExactlyTheMatchingPatterns) {
    bus::SubjectTrie<int> trie;
    const std::vector<std::string> patterns = {
        "orders.*.created", "orders.>",    "orders.eu.created", ">",
        "*.eu.*",           "metrics.cpu", "orders.eu.created"};
    for (std::size_t i = 0; i < patterns.size(); ++i)
        trie.insert(patterns[i], static_cast<int>(i));
    auto matches = [&](std::string_view subject) {
        std::vector<int> got;
        trie.match(subject, [&](int v) { got.push_back(v); });
        std::sort(got.begin(), got.end());
        return got;
    };
    EXPECT_EQ(matches("orders.eu.created"), (std::vector<int>{0, 1, 2, 3, 4, 6}));
    EXPECT_EQ(matches("orders"), (std::vector<int>{3}));
    EXPECT_EQ(matches("metrics.cpu"), (std::vector<int>{3, 5}));
    EXPECT_TRUE(trie.erase("orders.eu.created", 2));
    EXPECT_FALSE(trie.erase("orders.eu.created", 2));
    EXPECT_TRUE(trie.erase(">", 3));
    EXPECT_EQ(matches("orders.eu.created"), (std::vector<int>{0, 1, 4, 6}));
    EXPECT_EQ(trie.size(), 5u);
}

TEST(SubjectTrie, AgreesWithTheReferenceMatcherOnRandomInput) {
    std::mt19937 rng(42);
    const std::vector<std::string> tokens = {"a", "b", "c", "*", ">"};
    auto random_name = [&](bool wildcards) {
        std::string s;
        const int n = 1 + static_cast<int>(rng() % 4);
        for (int i = 0; i < n; ++i) {
            std::string t = tokens[rng() % (wildcards ? 5 : 3)];
            if (t == ">" && i != n - 1)
                t = "*";
            s += (i ? "." : "") + t;
        }
        return s;
    };
    bus::SubjectTrie<int> trie;
    std::vector<std::string> patterns;
    for (int i = 0; i < 200; ++i) {
        patterns.push_back(random_name(true));
        ASSERT_TRUE(bus::valid_pattern(patterns.back())) << patterns.back();
        trie.insert(patterns.back(), i);
    }
    for (int i = 0; i < 500; ++i) {
        const auto subject = random_name(false);
        std::vector<int> expected, got;
        for (std::size_t p = 0; p < patterns.size(); ++p)
            if (bus::subject_matches(patterns[p], subject))
                expected.push_back(static_cast<int>(p));
        trie.match(subject, [&](int v) { got.push_back(v); });
        std::sort(got.begin(), got.end());
        ASSERT_EQ(got, expected) << subject;
    }
    for (std::size_t p = 0; p < patterns.size(); ++p)
        ASSERT_TRUE(trie.erase(patterns[p], static_cast<int>(p)));
    EXPECT_EQ(trie.size(), 0u);
}

} // namespace
