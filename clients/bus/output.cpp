// Styles, tables and text for bytes, times and messages (output.hpp).
#include "output.hpp"

#include <bus/message.hpp>

#include <google/protobuf/message.h>

#include <algorithm>
#include <ctime>

namespace bus::cli {

std::string Style::wrap(std::string_view text, const char* code) const {
    if (!on)
        return std::string(text);
    return std::string("\x1b[") + code + "m" + std::string(text) + "\x1b[0m";
}

void Table::print(std::FILE* out, const Style& style) const {
    if (!style.on) {
        auto line = [&](const std::vector<std::string>& cells) {
            for (std::size_t i = 0; i < cells.size(); ++i)
                std::fprintf(out, "%s%s", i ? "\t" : "", cells[i].c_str());
            std::fputc('\n', out);
        };
        line(header_);
        for (const auto& r : rows_)
            line(r);
        return;
    }
    std::vector<std::size_t> width(header_.size());
    for (std::size_t i = 0; i < header_.size(); ++i)
        width[i] = header_[i].size();
    for (const auto& r : rows_)
        for (std::size_t i = 0; i < r.size() && i < width.size(); ++i)
            width[i] = std::max(width[i], r[i].size());
    auto line = [&](const std::vector<std::string>& cells, bool head) {
        std::string text;
        for (std::size_t i = 0; i < cells.size(); ++i) {
            std::string cell = cells[i];
            if (i + 1 < cells.size())
                cell.resize(std::max(cell.size(), width[i]), ' ');
            text += (i ? "  " : "") + cell;
        }
        std::fprintf(out, "%s\n", head ? style.bold(text).c_str() : text.c_str());
    };
    line(header_, true);
    for (const auto& r : rows_)
        line(r, false);
}

std::string hex(std::string_view bytes) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char c : bytes) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

bool printable_utf8(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        std::size_t n = 0;
        if (c < 0x80) {
            if ((c < 0x20 && c != '\n' && c != '\t' && c != '\r') || c == 0x7f)
                return false;
            ++i;
            continue;
        }
        if ((c & 0xe0) == 0xc0 && c >= 0xc2)
            n = 1;
        else if ((c & 0xf0) == 0xe0)
            n = 2;
        else if ((c & 0xf8) == 0xf0 && c <= 0xf4)
            n = 3;
        else
            return false;
        for (std::size_t k = 1; k <= n; ++k)
            if (i + k >= s.size() || (static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80)
                return false;
        i += n + 1;
    }
    return true;
}

std::string duration_text(std::chrono::seconds duration, int units) {
    static constexpr std::pair<std::int64_t, char> scale[] = {
        {86400, 'd'}, {3600, 'h'}, {60, 'm'}, {1, 's'}};
    const std::int64_t s = std::max<std::int64_t>(0, duration.count());
    std::size_t first = 0;
    while (first + 1 < std::size(scale) && s < scale[first].first)
        ++first;
    std::string out;
    for (std::size_t i = first; i < std::size(scale) && i < first + units; ++i) {
        const auto value =
            i == first ? s / scale[i].first : s % scale[i - 1].first / scale[i].first;
        char buf[32];
        std::snprintf(buf, sizeof buf, i == first ? "%lld%c" : "%02lld%c",
                      static_cast<long long>(value), scale[i].second);
        out += buf;
    }
    return out;
}

std::string local_time(std::chrono::system_clock::time_point t) {
    const auto secs = std::chrono::system_clock::to_time_t(t);
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count() % 1000;
    std::tm tm{};
    ::localtime_r(&secs, &tm);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%02d:%02d:%02d.%03d", tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<int>(ms));
    return buf;
}

std::string iso_time(std::chrono::system_clock::time_point t) {
    const auto secs = std::chrono::system_clock::to_time_t(t);
    const auto us =
        std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count() %
        1'000'000;
    std::tm tm{};
    ::gmtime_r(&secs, &tm);
    char buf[48];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<int>(us));
    return buf;
}

std::string to_json(const google::protobuf::Message& m) {
    // The library's mapping, so `bus sub --json` shows what a Node peer receives.
    auto json = bus::to_json(m);
    return json ? std::move(json).value() : std::string();
}

} // namespace bus::cli
