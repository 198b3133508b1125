// What every benchmark prints: aligned text tables, and one `bar:` line per target, in a form
// scripts can grep (`bar: NAME measured=X target=Y ok|short`).
#pragma once

#include <cstdio>
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

// One value per round of a case. The machine is shared, so a single run can land on a bad
// moment: tables show the median and how far the rounds spread.
struct Samples {
    std::vector<double> values;

    double median() const;
    // (max - min) / median in percent, "-" for fewer than two values or a zero median
    std::string spread() const;
};

} // namespace bench
