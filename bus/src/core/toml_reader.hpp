// Reading busd's TOML config, one copy for both readers of the file: the broker's sections
// (broker/config.cpp) and the cluster's [[app]] tables (cluster/config.cpp). A TomlReader is
// one table of the file; every refusal is a ConfigError naming the file and the full key
// ("busd.toml: key 'app[0].instances': must be between 1 and 1024").
//
// Header-only: its users, bus::broker and bus::cluster, link toml++; bus::bus, under both, does
// not, and has no use for it.
#pragma once

#include "bus/config_error.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bus::detail {

[[noreturn]] inline void throw_syntax_error(const std::string& source, const toml::parse_error& e) {
    throw ConfigError(source + ":" + std::to_string(e.source().begin.line) + ": " +
                      std::string(e.description()));
}

// TOML text; a syntax error is a ConfigError "SOURCE:LINE: what".
inline toml::table parse_toml(std::string_view text, const std::string& source) {
    try {
        return toml::parse(text, source);
    } catch (const toml::parse_error& e) {
        throw_syntax_error(source, e);
    }
}

// A TOML file, the same way (a file that cannot be opened is toml++'s parse error too).
inline toml::table parse_toml_file(const std::string& path) {
    try {
        return toml::parse_file(path);
    } catch (const toml::parse_error& e) {
        throw_syntax_error(path, e);
    }
}

class TomlReader {
public:
    // `prefix`: the table's own key ("app[0]", "access"), empty for the file's root table. The
    // table must outlive the reader.
    TomlReader(std::string source, const toml::table& table, std::string prefix = {})
        : source_(std::move(source)), table_(table), prefix_(std::move(prefix)) {}

    // `key` in this table ("instances"), or the table itself when empty, with its prefix.
    std::string name(std::string_view key) const {
        if (prefix_.empty())
            return std::string(key);
        return key.empty() ? prefix_ : prefix_ + "." + std::string(key);
    }

    [[noreturn]] void fail(std::string_view key, const std::string& what) const {
        throw ConfigError(source_ + ": key '" + name(key) + "': " + what);
    }

    // Every key of the table must be one of `known`.
    void only(std::initializer_list<std::string_view> known) const {
        for (const auto& [key, value] : table_)
            if (std::find(known.begin(), known.end(), key.str()) == known.end())
                fail(key.str(), "unknown key");
    }

    const toml::node* get(const char* key) const { return table_.get(key); }

    // The table under `key`, or none when the key is absent.
    std::optional<TomlReader> table(const char* key) const {
        const auto* node = get(key);
        if (!node)
            return std::nullopt;
        if (!node->is_table())
            fail(key, "must be a table");
        return TomlReader(source_, *node->as_table(), name(key));
    }

    // The tables of `[[key]]`, named key[0], key[1], ...; none when the key is absent.
    std::vector<TomlReader> tables(const char* key) const {
        std::vector<TomlReader> out;
        const auto* node = get(key);
        if (!node)
            return out;
        if (!node->is_array_of_tables())
            fail(key, "must be an array of tables ([[" + name(key) + "]])");
        for (const auto& item : *node->as_array())
            out.emplace_back(source_, *item.as_table(),
                             name(key) + "[" + std::to_string(out.size()) + "]");
        return out;
    }

    // The array under `key` (null when absent): its items are the caller's to check, and
    // anything else there is refused with `what` ("must be an array of ids").
    const toml::array* array(const char* key, const std::string& what) const {
        const auto* node = get(key);
        if (!node)
            return nullptr;
        if (!node->is_array())
            fail(key, what);
        return node->as_array();
    }

    std::optional<std::string> string(const char* key) const {
        const auto* node = get(key);
        if (!node)
            return std::nullopt;
        if (!node->is_string())
            fail(key, "must be a string");
        return node->as_string()->get();
    }

    std::vector<std::string> strings(const char* key) const {
        std::vector<std::string> out;
        if (const auto* items = array(key, "must be an array of strings"))
            for (const auto& item : *items) {
                if (!item.is_string())
                    fail(key, "must be an array of strings");
                out.push_back(item.as_string()->get());
            }
        return out;
    }

    // An integer in [min, max] into `out`; `out` is left alone when the key is absent.
    template <class T>
    void integer(const char* key, T& out, std::int64_t min, std::int64_t max) const {
        const auto* node = get(key);
        if (!node)
            return;
        if (!node->is_integer())
            fail(key, "must be an integer");
        const auto v = node->as_integer()->get();
        if (v < min || v > max)
            fail(key, "must be between " + std::to_string(min) + " and " + std::to_string(max));
        out = static_cast<T>(v);
    }

    // An integer count of milliseconds (the key says so: "heartbeat_ms"), as integer().
    void duration(const char* key, std::chrono::milliseconds& out, std::int64_t min,
                  std::int64_t max) const {
        std::int64_t ms = out.count();
        integer(key, ms, min, max);
        out = std::chrono::milliseconds(ms);
    }

private:
    std::string source_;
    const toml::table& table_;
    std::string prefix_;
};

} // namespace bus::detail
