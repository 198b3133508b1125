#include "cluster/logs.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <limits>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace bus::cluster::detail {

namespace asio = boost::asio;

std::string valid_utf8(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    const auto* end = p + text.size();
    while (p < end) {
        const unsigned char c = *p;
        std::size_t n = 0;
        unsigned char lo = 0x80, hi = 0xBF; // the second byte's range (RFC 3629, table 3-7)
        if (c < 0x80)
            n = 1;
        else if (c >= 0xC2 && c <= 0xDF)
            n = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            n = 3;
            lo = c == 0xE0 ? 0xA0 : 0x80; // no overlong forms
            hi = c == 0xED ? 0x9F : 0xBF; // no surrogates
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF; // nothing above U+10FFFF
        }
        bool ok = n > 0 && static_cast<std::size_t>(end - p) >= n;
        for (std::size_t i = 1; ok && i < n; ++i)
            ok = i == 1 ? p[1] >= lo && p[1] <= hi : (p[i] & 0xC0) == 0x80;
        if (ok) {
            out.append(reinterpret_cast<const char*>(p), n);
            p += n;
        } else {
            out += "\xEF\xBF\xBD";
            ++p;
        }
    }
    return out;
}

std::string format_log_line(const v1::LogLine& line) {
    const std::int64_t ns = line.unix_ns();
    const std::time_t seconds = static_cast<std::time_t>(ns / 1'000'000'000);
    std::tm tm{};
    ::gmtime_r(&seconds, &tm);
    char stamp[64];
    const std::size_t n = std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    std::snprintf(stamp + n, sizeof stamp - n, ".%06lldZ",
                  static_cast<long long>(ns % 1'000'000'000 / 1000));
    return std::string(stamp) + " " + line.app() + "[" + std::to_string(line.instance()) + "] " +
           std::to_string(line.pid()) + " " + line.stream() + ": " + line.text();
}

std::optional<v1::LogLine> parse_log_line(std::string_view text) {
    auto word = [&text]() -> std::string_view {
        const auto space = text.find(' ');
        if (space == std::string_view::npos)
            return {};
        const auto w = text.substr(0, space);
        text.remove_prefix(space + 1);
        return w;
    };
    const auto stamp = word(), who = word(), pid = word(), stream = word();
    if (stamp.size() != 27 || stamp[10] != 'T' || stamp[19] != '.' || stamp[26] != 'Z' ||
        (stream != "out:" && stream != "err:"))
        return std::nullopt;
    std::tm tm{};
    const std::string head(stamp.substr(0, 19));
    const char* rest = ::strptime(head.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
    // The whole of `digits` as a number, in range.
    auto number = [](std::string_view digits, auto& out) {
        const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), out);
        return !digits.empty() && ec == std::errc() && end == digits.data() + digits.size();
    };
    unsigned long long micros = 0;
    if (!rest || *rest || !number(stamp.substr(20, 6), micros))
        return std::nullopt;
    const auto open = who.rfind('[');
    std::uint32_t instance = 0, process = 0;
    if (open == std::string_view::npos || open == 0 || who.back() != ']' ||
        !number(who.substr(open + 1, who.size() - open - 2), instance) || !number(pid, process))
        return std::nullopt;
    // Nanoseconds since 1970 fit an int64 until 2262.
    const std::int64_t seconds = ::timegm(&tm);
    if (seconds < 0 || seconds >= std::numeric_limits<std::int64_t>::max() / 1'000'000'000)
        return std::nullopt;
    v1::LogLine line;
    line.set_unix_ns((seconds * 1'000'000 + static_cast<std::int64_t>(micros)) * 1000);
    line.set_app(valid_utf8(who.substr(0, open)));
    line.set_instance(instance);
    line.set_pid(process);
    line.set_stream(std::string(stream.substr(0, 3)));
    line.set_text(valid_utf8(text));
    return line;
}

// --- LogFile --------------------------------------------------------------------------------

LogFile::LogFile(std::string dir, std::string app, std::uint64_t max_bytes, int files)
    : dir_(std::move(dir)), path_(dir_ + "/" + app + ".log"), max_bytes_(max_bytes),
      files_(std::max(files, 1)) {}

void LogFile::open(const std::function<void(const std::string&)>& error) {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    fd_ = UniqueFd(::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
    if (!fd_) {
        if (!failed_ && error)
            error("cannot write " + path_ + ": " + std::strerror(errno));
        failed_ = true;
        return;
    }
    failed_ = false;
    struct stat st {};
    size_ = ::fstat(fd_.get(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
}

void LogFile::rotate(const std::function<void(const std::string&)>& error) {
    fd_.reset();
    std::error_code ec;
    // APP.log.(files-1) falls off; each older one moves up; APP.log becomes APP.log.1.
    for (int i = files_ - 1; i >= 1; --i) {
        const std::string from = i == 1 ? path_ : path_ + "." + std::to_string(i - 1);
        if (i == files_ - 1 || files_ == 1)
            std::filesystem::remove(path_ + "." + std::to_string(i), ec);
        std::filesystem::rename(from, path_ + "." + std::to_string(i), ec);
    }
    if (files_ == 1)
        std::filesystem::remove(path_, ec);
    open(error);
}

void LogFile::append(std::string_view lines, const std::function<void(const std::string&)>& error) {
    if (!fd_)
        open(error);
    if (fd_ && size_ > 0 && size_ + lines.size() > max_bytes_)
        rotate(error);
    if (!fd_)
        return;
    while (!lines.empty()) {
        const ssize_t n = ::write(fd_.get(), lines.data(), lines.size());
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (!failed_ && error)
                error("cannot write " + path_ + ": " + std::strerror(errno));
            failed_ = true;
            fd_.reset(); // tried again with the next lines
            return;
        }
        size_ += static_cast<std::uint64_t>(n);
        lines.remove_prefix(static_cast<std::size_t>(n));
    }
}

std::vector<std::string> LogFile::tail(std::size_t n) const {
    // At most this much is read for one answer, whatever the files hold.
    constexpr std::size_t max_read = 8 << 20;
    std::vector<std::string> out; // oldest first
    std::size_t read_in_all = 0;
    // The current file, then the rotated ones, each read backwards in blocks.
    for (int i = 0; i < files_ && out.size() < n && read_in_all < max_read; ++i) {
        const std::string path = i == 0 ? path_ : path_ + "." + std::to_string(i);
        UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        struct stat st {};
        if (!fd || ::fstat(fd.get(), &st) != 0)
            continue;
        const std::size_t want = n - out.size();
        std::string data;
        off_t end = st.st_size;
        // More newlines than lines wanted: the first line read may be cut.
        while (end > 0 &&
               static_cast<std::size_t>(std::count(data.begin(), data.end(), '\n')) <= want &&
               read_in_all < max_read) {
            char block[64 * 1024];
            const off_t start = std::max<off_t>(0, end - static_cast<off_t>(sizeof block));
            const ssize_t got =
                ::pread(fd.get(), block, static_cast<std::size_t>(end - start), start);
            if (got <= 0)
                break;
            data.insert(0, block, static_cast<std::size_t>(got));
            read_in_all += static_cast<std::size_t>(got);
            end = start;
        }
        std::vector<std::string> lines;
        for (std::size_t at = 0; at < data.size();) {
            const auto nl = data.find('\n', at);
            const auto stop = nl == std::string::npos ? data.size() : nl;
            lines.push_back(data.substr(at, stop - at));
            at = stop + 1;
        }
        if (end > 0 && !lines.empty())
            lines.erase(lines.begin()); // its beginning is further back
        const std::size_t take = std::min(want, lines.size());
        out.insert(out.begin(), lines.end() - static_cast<std::ptrdiff_t>(take), lines.end());
    }
    return out;
}

// --- OutputReader -----------------------------------------------------------------------------

void OutputReader::start(asio::io_context& io, UniqueFd pipe, LinesHandler on_lines) {
    std::shared_ptr<OutputReader> reader(
        new OutputReader(io, std::move(pipe), std::move(on_lines)));
    reader->read();
}

OutputReader::OutputReader(asio::io_context& io, UniqueFd pipe, LinesHandler on_lines)
    : pipe_(io, pipe.release()), on_lines_(std::move(on_lines)) {}

void OutputReader::read() {
    pipe_.async_read_some(asio::buffer(buffer_), [self = shared_from_this()](
                                                     boost::system::error_code ec, std::size_t n) {
        std::vector<std::string> lines;
        std::string_view in(self->buffer_, n);
        while (!in.empty()) {
            const auto nl = in.find('\n');
            const auto take = std::min(nl == std::string_view::npos ? in.size() : nl,
                                       max_log_line - self->partial_.size());
            if (take > 0)
                self->cut_ = false;
            self->partial_.append(in.substr(0, take));
            in.remove_prefix(take);
            if (!in.empty() && in.front() == '\n') {
                in.remove_prefix(1);
                // The newline ending a line cut exactly at the bound is not one more (empty)
                // line.
                if (!self->cut_)
                    lines.push_back(std::exchange(self->partial_, {}));
                self->cut_ = false;
            } else if (self->partial_.size() >= max_log_line) {
                lines.push_back(std::exchange(self->partial_, {}));
                self->cut_ = true;
            }
        }
        if (ec && !self->partial_.empty()) // the last line, without its newline
            lines.push_back(std::exchange(self->partial_, {}));
        if (!lines.empty())
            self->on_lines_(lines);
        if (!ec)
            self->read();
    });
}

} // namespace bus::cluster::detail
