// What every benchmark prints, and the figures it prints: aligned text tables, one `bar:` line
// per target in a form scripts can grep (`bar: NAME measured=X target=Y ok|short`), the rounds
// of a case (Samples: median and spread) and the percentiles of a run's samples.
#pragma once

#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace bench {

enum class Align { left, right };

struct Column {
    std::string title;
    Align align = Align::right;
};

class Table {
public:
    explicit Table(std::vector<Column> columns) : columns_(std::move(columns)) {}

    // Missing trailing cells print empty; extra cells are an error (std::invalid_argument).
    void add_row(std::vector<std::string> cells);
    void print(std::FILE* out) const;

private:
    std::vector<Column> columns_;
    std::vector<std::vector<std::string>> rows_;
};

// 1234567.8 -> "1,234,568"
std::string thousands(double value);
// fixed(3.14159, 2) -> "3.14"
std::string fixed(double value, int decimals);
// 64 -> "64B", 4096 -> "4KiB": how case names and tables spell a payload size.
std::string size_name(std::size_t bytes);
// a / b with two decimals, "-" unless both were measured and are positive.
std::string ratio_text(std::optional<double> a, std::optional<double> b);

struct Bar {
    std::string name;
    double measured = 0;
    // As the issue states it ("20", "0.70"), so the line reads like the issue.
    std::string target;
    // Most bars are ratios where more is better; a latency ratio is met from below.
    bool at_most = false;

    bool ok() const;
};

void print_bar(std::FILE* out, const Bar& bar);

// The bar `name` for numerator / denominator. It prints only when both were measured (--only
// may have skipped one) and the denominator is positive.
void print_ratio_bar(std::FILE* out, const std::string& name, std::optional<double> numerator,
                     std::optional<double> denominator, const std::string& target,
                     bool at_most = false);

// One value per round of a case. The machine is shared, so a single run can land on a bad
// moment: tables show the median and how far the rounds spread.
struct Samples {
    std::vector<double> values;

    double median() const;
    // (max - min) / median in percent, "-" for fewer than two values or a zero median
    std::string spread() const;
};

// The median of the rounds recorded under `key`; none when that case did not run.
std::optional<double> median_of(const std::map<std::string, Samples>& samples,
                                const std::string& key);

// Nearest-rank percentile (p in 0..1) of one run's samples, which it sorts; 0 for none. The
// Node peer of channel-bench computes it the same way, so their figures compare.
double percentile(std::vector<double>& samples, double p);

} // namespace bench
