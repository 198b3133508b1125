// The SIGALRM watchdog of watchdog.hpp.
#include "watchdog.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <csignal>

#include <unistd.h>

namespace bench::watchdog {
namespace {

// The handler may only write(): the names live in fixed buffers, and enter() fills the one the
// handler is not reading before it switches, so a timeout never reads a name half written or
// freed.
using Name = std::array<char, 128>;
Name program_name{};
std::array<Name, 2> case_names{};
std::atomic<int> current{0};

void copy(std::string_view from, Name& to) {
    const std::size_t n = std::min(from.size(), to.size() - 1);
    from.copy(to.data(), n);
    to[n] = '\0';
}

void write_text(const char* text) {
    std::size_t n = 0;
    while (text[n])
        ++n;
    (void)!::write(2, text, n);
}

void on_alarm(int) {
    write_text(program_name.data());
    write_text(": timed out in case ");
    write_text(case_names[static_cast<std::size_t>(current.load())].data());
    write_text("\n");
    ::_exit(3);
}

} // namespace

void install(std::string_view program) {
    copy(program, program_name);
    std::signal(SIGALRM, on_alarm);
}

void enter(std::string_view case_name) {
    const int next = 1 - current.load();
    copy(case_name, case_names[static_cast<std::size_t>(next)]);
    current.store(next);
}

void arm(unsigned seconds) {
    ::alarm(seconds);
}

void arm_case(std::string_view case_name, double seconds) {
    enter(case_name);
    arm(static_cast<unsigned>(std::ceil(seconds * 4)) + 30);
}

void disarm() {
    ::alarm(0);
}

} // namespace bench::watchdog
