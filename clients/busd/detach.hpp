// busd --daemon: detaching from the terminal as PM2's daemon does.
#pragma once

#include <string>

namespace busd {

// Fork, setsid, fork again; output goes to `log_file`. Returns in the daemon with `ready` (a
// pipe) to write one byte to once it serves (ready_to_serve()); the foreground process exits
// with 0 when that byte arrives and 1 when the daemon fails first. -1 with errno on failure.
int detach(const std::string& log_file, int& ready);
// Writes the pid file and tells the waiting foreground process that busd serves.
void ready_to_serve(int ready, const std::string& pid_file);

} // namespace busd
