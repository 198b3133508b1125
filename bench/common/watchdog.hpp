// The watchdog: a hung case must not hang `bench/run`. On SIGALRM the bench prints which case
// it was in ("PROGRAM: timed out in case NAME") and exits 3; its forked peers follow it
// (ForkOptions::death_signal).
#pragma once

#include <string_view>

namespace bench::watchdog {

// Installs the SIGALRM handler; `program` starts the message. Arms nothing.
void install(std::string_view program);

// The case a timeout is blamed on, from now on.
void enter(std::string_view case_name);

// Fires in `seconds` (whole: alarm()), replacing what was armed before; 0 disarms.
void arm(unsigned seconds);

// enter(case_name), and arm for a case that measures for `seconds`: four times that plus 30 s,
// as a case also starts its peers, and on a loaded machine takes twice as long.
void arm_case(std::string_view case_name, double seconds);

void disarm();

} // namespace bench::watchdog
