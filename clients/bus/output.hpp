// What commands print with: colours (only on a terminal), aligned tables, and bytes, times
// and protobuf messages as text.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace google::protobuf {
class Message;
}

namespace bus::cli {

struct Style {
    bool on = false;
    std::string wrap(std::string_view text, const char* code) const;
    std::string bold(std::string_view t) const { return wrap(t, "1"); }
    std::string dim(std::string_view t) const { return wrap(t, "2"); }
    std::string cyan(std::string_view t) const { return wrap(t, "36"); }
    std::string yellow(std::string_view t) const { return wrap(t, "33"); }
    std::string green(std::string_view t) const { return wrap(t, "32"); }
    std::string red(std::string_view t) const { return wrap(t, "31"); }
};

// Columns aligned (and a bold header) on a terminal; tab-separated when piped.
class Table {
public:
    explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
    void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
    void print(std::FILE* out, const Style& style) const;

private:
    std::vector<std::string> header_;
    std::vector<std::vector<std::string>> rows_;
};

std::string hex(std::string_view bytes);
bool printable_utf8(std::string_view bytes);
// A duration as its largest `units` units, the first unpadded: "42s", "3m07s", "1h05m03s",
// "2d03h10m" (3 units), "1h05m" (2).
std::string duration_text(std::chrono::seconds duration, int units);
std::string local_time(std::chrono::system_clock::time_point t); // HH:MM:SS.mmm
std::string iso_time(std::chrono::system_clock::time_point t);   // UTC, RFC 3339, µs

// protobuf's JSON mapping of `m`, compact; field names as in the .proto.
std::string to_json(const google::protobuf::Message& m);

} // namespace bus::cli
