// The report's tables, bar lines and statistics (report.hpp says what each does).
#include "report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <stdexcept>

namespace bench {

void Table::add_row(std::vector<std::string> cells) {
    if (cells.size() > columns_.size())
        throw std::invalid_argument("bench::Table: more cells than columns");
    cells.resize(columns_.size());
    rows_.push_back(std::move(cells));
}

void Table::print(std::FILE* out) const {
    std::vector<std::size_t> widths(columns_.size());
    for (std::size_t c = 0; c < columns_.size(); ++c) {
        widths[c] = columns_[c].title.size();
        for (const auto& row : rows_)
            widths[c] = std::max(widths[c], row[c].size());
    }
    auto print_line = [&](auto cell_of) {
        std::string line;
        for (std::size_t c = 0; c < columns_.size(); ++c) {
            const std::string& text = cell_of(c);
            const std::string pad(widths[c] - text.size(), ' ');
            if (c > 0)
                line += "  ";
            line += columns_[c].align == Align::left ? text + pad : pad + text;
        }
        while (!line.empty() && line.back() == ' ')
            line.pop_back();
        std::fprintf(out, "%s\n", line.c_str());
    };
    print_line([&](std::size_t c) -> const std::string& { return columns_[c].title; });
    std::size_t total = 2 * (columns_.size() - 1);
    for (auto w : widths)
        total += w;
    std::fprintf(out, "%s\n", std::string(total, '-').c_str());
    for (const auto& row : rows_)
        print_line([&](std::size_t c) -> const std::string& { return row[c]; });
}

std::string thousands(double value) {
    if (!std::isfinite(value))
        return "-";
    const auto whole = static_cast<long long>(std::llround(value));
    std::string digits = std::to_string(std::llabs(whole));
    std::string out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0)
            out += ',';
        out += digits[i];
    }
    return whole < 0 ? "-" + out : out;
}

std::string fixed(double value, int decimals) {
    if (!std::isfinite(value))
        return "-";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, value);
    return buf;
}

std::string size_name(std::size_t bytes) {
    return bytes >= 1024 && bytes % 1024 == 0 ? std::to_string(bytes / 1024) + "KiB"
                                              : std::to_string(bytes) + "B";
}

std::string ratio_text(std::optional<double> a, std::optional<double> b) {
    return a && b && *a > 0 && *b > 0 ? fixed(*a / *b, 2) : "-";
}

// Judged on the value as printed (two decimals), so that a line never reads
// "measured=0.70 target=0.70 short".
bool Bar::ok() const {
    const double shown = std::round(measured * 100) / 100;
    const double limit = std::strtod(target.c_str(), nullptr);
    return at_most ? shown <= limit : shown >= limit;
}

void print_bar(std::FILE* out, const Bar& bar) {
    std::fprintf(out, "bar: %s measured=%s target=%s %s\n", bar.name.c_str(),
                 fixed(bar.measured, 2).c_str(), bar.target.c_str(), bar.ok() ? "ok" : "short");
}

void print_ratio_bar(std::FILE* out, const std::string& name, std::optional<double> numerator,
                     std::optional<double> denominator, const std::string& target, bool at_most) {
    if (numerator && denominator && *denominator > 0)
        print_bar(out, {name, *numerator / *denominator, target, at_most});
}

double Samples::median() const {
    auto sorted = values;
    std::sort(sorted.begin(), sorted.end());
    const std::size_t n = sorted.size();
    if (n == 0)
        return 0;
    return n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}

std::string Samples::spread() const {
    if (values.size() < 2)
        return "-";
    const auto [min, max] = std::minmax_element(values.begin(), values.end());
    const double m = median();
    return m > 0 ? fixed(100 * (*max - *min) / m, 0) + "%" : "-";
}

std::optional<double> median_of(const std::map<std::string, Samples>& samples,
                                const std::string& key) {
    const auto it = samples.find(key);
    if (it == samples.end() || it->second.values.empty())
        return std::nullopt;
    return it->second.median();
}

double percentile(std::vector<double>& samples, double p) {
    if (samples.empty())
        return 0;
    std::sort(samples.begin(), samples.end());
    const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(samples.size())));
    return samples[std::max<std::size_t>(rank, 1) - 1];
}

} // namespace bench
