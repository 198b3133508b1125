// For the tests of busd's config readers (broker_config_test, cluster_config_test): a bad value
// must be a bus::ConfigError whose message names the file and the key, "FILE: key 'KEY': why".
#pragma once

#include "temp_dir.hpp"

#include <bus/config_error.hpp>

#include <gtest/gtest.h>

#include <ostream>
#include <string>

namespace bus::test {

// A config file's text with one bad value, and the key its error must name.
struct BadConfig {
    const char* toml;
    const char* key;
};

// On one line ("app[0].instances in [[app]] / name = ..."): gtest prints it on failure, and
// gtest_discover_tests makes it the end of the test's name in ctest.
inline std::ostream& operator<<(std::ostream& out, const BadConfig& bad) {
    std::string text = bad.toml;
    while (!text.empty() && text.back() == '\n')
        text.pop_back();
    for (auto at = text.find('\n'); at != std::string::npos; at = text.find('\n', at))
        text.replace(at, 1, " / ");
    return out << bad.key << " in " << text;
}

// The message of the ConfigError `read` throws for `text` as DIR/busd.toml ("" when none).
template <class Read>
std::string config_error(const TempDir& dir, const std::string& text, Read read) {
    try {
        read(dir.write("busd.toml", text));
    } catch (const ConfigError& e) {
        return e.what();
    }
    return {};
}

// Whether `what` starts "FILE: key 'KEY': ".
inline ::testing::AssertionResult
names_file_and_key(const std::string& what, const std::string& file, const std::string& key) {
    const std::string expected = file + ": key '" + key + "': ";
    if (what.rfind(expected, 0) == 0)
        return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "expected " << expected << "...\ngot: " << what;
}

} // namespace bus::test
