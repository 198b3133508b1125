// Worker output in cluster mode: busd gives each worker pipes as stdout and stderr, splits
// what arrives into lines, appends them to the app's log file (rotated by size) and publishes
// each on `$sys.log.APP` (docs/cluster.md, "Logs"). `bus cluster logs APP` reads the tail of the
// files back through busd.
#pragma once

#include "bus/error.hpp"
#include "bus/unique_fd.hpp"
#include "bus/v1/cluster.pb.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bus::cluster::detail {

// Longest line kept whole: a longer one is cut into pieces of this size (a worker that never
// writes a newline costs busd no more than this).
inline constexpr std::size_t max_log_line = 16 * 1024;

// `text` with every byte sequence that is not UTF-8 replaced by U+FFFD (protobuf string fields
// must be UTF-8, and a worker may print anything).
std::string valid_utf8(std::string_view text);

// One line of an app's log file: `2026-11-26T15:40:01.123456Z web[0] 1234 out: text`.
std::string format_log_line(const v1::LogLine& line);
// The line back, or nothing when it is not in that form (the text is then the whole line).
std::optional<v1::LogLine> parse_log_line(std::string_view line);

// An app's log file, `DIR/APP.log`, rotated when it passes `max_bytes`: APP.log.1 is the one
// before, up to APP.log.<files - 1>.
class LogFile {
public:
    LogFile(std::string dir, std::string app, std::uint64_t max_bytes, int files);
    // Appends already formatted lines (each ending in '\n'); errors are reported once per
    // kind through `error`, and the lines are still published.
    void append(std::string_view lines, const std::function<void(const std::string&)>& error);
    // The last `n` lines, oldest first, from the current file and the rotated ones.
    std::vector<std::string> tail(std::size_t n) const;
    const std::string& path() const noexcept { return path_; }

private:
    void open(const std::function<void(const std::string&)>& error);
    void rotate(const std::function<void(const std::string&)>& error);
    std::string dir_, path_;
    std::uint64_t max_bytes_;
    int files_;
    UniqueFd fd_;
    std::uint64_t size_ = 0;
    bool failed_ = false; // an error already reported
};

// Reads one pipe of a worker until EOF, cutting what arrives into lines; hands each batch of
// complete lines to `on_lines` (one call per read). Holds itself alive while reading.
class OutputReader : public std::enable_shared_from_this<OutputReader> {
public:
    using LinesHandler = std::function<void(std::vector<std::string>& lines)>;
    static void start(boost::asio::io_context& io, UniqueFd pipe, LinesHandler on_lines);

private:
    OutputReader(boost::asio::io_context& io, UniqueFd pipe, LinesHandler on_lines);
    void read();
    boost::asio::posix::stream_descriptor pipe_;
    LinesHandler on_lines_;
    std::string partial_;
    bool cut_ = false; // the last line was cut at max_log_line
    char buffer_[16 * 1024];
};

} // namespace bus::cluster::detail
