// The shared command line (options.hpp says what each flag means).
#include "options.hpp"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace bench {

bool Options::selected(std::string_view name) const {
    return only.empty() || std::any_of(only.begin(), only.end(), [&](const std::string& part) {
               return name.find(part) != std::string_view::npos;
           });
}

double to_double(std::string_view text) {
    double value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc() || end != text.data() + text.size())
        throw std::invalid_argument("not a number: '" + std::string(text) + "'");
    return value;
}

long long to_integer(std::string_view text, long long least, long long most) {
    long long value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc() || end != text.data() + text.size())
        throw std::invalid_argument("not a whole number: '" + std::string(text) + "'");
    if (value < least)
        throw std::invalid_argument("must be at least " + std::to_string(least));
    if (value > most)
        throw std::invalid_argument("must be at most " + std::to_string(most));
    return value;
}

OptionParser::OptionParser(std::string program, Options& options, Selection selection)
    : program_(std::move(program)) {
    add("--seconds", "S", [&options](std::string_view v) {
        options.seconds = to_double(v);
        if (!(options.seconds > 0))
            throw std::invalid_argument("must be positive");
    });
    add("--rounds", "N",
        [&options](std::string_view v) { options.rounds = static_cast<int>(to_integer(v, 1)); });
    if (selection == with_only)
        // Given more than once, the lists add up.
        add("--only", "NAME[,NAME...]", [&options](std::string_view list) {
            for (std::size_t start = 0; start <= list.size();) {
                const auto comma = std::min(list.find(',', start), list.size());
                if (comma > start)
                    options.only.emplace_back(list.substr(start, comma - start));
                start = comma + 1;
            }
        });
}

void OptionParser::add(std::string flag, std::string meta,
                       std::function<void(std::string_view)> set) {
    flags_.push_back({std::move(flag), std::move(meta), std::move(set)});
}

void OptionParser::add(std::string flag, std::function<void()> set) {
    flags_.push_back({std::move(flag), {}, [set = std::move(set)](std::string_view) { set(); }});
}

std::string OptionParser::usage() const {
    std::string line = "usage: " + program_;
    for (const auto& f : flags_)
        line += " [" + f.name + (f.meta.empty() ? "" : " " + f.meta) + "]";
    return line;
}

void OptionParser::parse(int argc, char** argv) {
    auto fail = [&](const std::string& what) {
        std::fprintf(stderr, "%s: %s\n%s\n", program_.c_str(), what.c_str(), usage().c_str());
        std::exit(2);
    };
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            std::printf("%s\n", usage().c_str());
            std::exit(0);
        }
        const auto flag = std::find_if(flags_.begin(), flags_.end(),
                                       [&](const Flag& f) { return f.name == arg; });
        if (flag == flags_.end())
            fail("unknown argument " + std::string(arg));
        std::string_view value;
        if (!flag->meta.empty()) {
            if (i + 1 >= argc)
                fail(flag->name + " needs a value");
            value = argv[++i];
        }
        try {
            flag->set(value);
        } catch (const std::invalid_argument& e) {
            fail(flag->name + ": " + e.what());
        }
    }
}

} // namespace bench
