// The command line every benchmark shares: --seconds (how long a case measures), --rounds (how
// many times each case runs; the tables show the median) and --only (which cases run), with a
// benchmark's own flags added on top. One parser, so a flag is spelled and read the same way in
// every benchmark, and a bad one ends the run with the same usage line.
#pragma once

#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace bench {

struct Options {
    double seconds = 1.0;
    int rounds = 3;
    // --only a,b: the cases whose name contains a or b; empty: every case.
    std::vector<std::string> only;

    bool selected(std::string_view name) const;
};

// The number `text` spells, all of it; std::invalid_argument when it is not one, or the integer
// is outside least..most.
double to_double(std::string_view text);
long long to_integer(std::string_view text, long long least,
                     long long most = std::numeric_limits<int>::max());

class OptionParser {
public:
    // Whether the benchmark has cases to pick with --only.
    enum Selection { with_only, without_only };

    // Reads into `options`, whose values on entry are the benchmark's defaults.
    OptionParser(std::string program, Options& options, Selection selection = with_only);

    // A flag of the benchmark's own that takes a value, shown as `meta` in the usage line;
    // `set` reads it and throws std::invalid_argument when it does not fit.
    void add(std::string flag, std::string meta, std::function<void(std::string_view)> set);
    // A flag of the benchmark's own without a value.
    void add(std::string flag, std::function<void()> set);

    // Reads argv. --help prints the usage line and exits 0; an unknown flag or a missing or bad
    // value (--seconds and --rounds must be positive) prints what is wrong and the usage line
    // to stderr and exits 2.
    void parse(int argc, char** argv);

private:
    struct Flag {
        std::string name;
        std::string meta; // empty: the flag takes no value
        std::function<void(std::string_view)> set;
    };
    std::string usage() const;

    std::string program_;
    std::vector<Flag> flags_;
};

} // namespace bench
