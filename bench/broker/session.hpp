// The frame of a benchmark that starts servers (broker-bench, http-bench): its --busd and --keep
// flags, the janitor and the watchdog, a private temporary directory, and cases that may break
// without ending the run.
#pragma once

#include "common/options.hpp"

#include <functional>
#include <string>

namespace bench::broker {

// --busd PATH (default `busd_default`, else the busd beside the bench) and --keep (leave the
// temporary directory for a look afterwards).
struct ServerFlags {
    std::string busd;
    bool keep = false;
    // Adds both to `parser`; call resolve() after it parsed.
    void add_to(bench::OptionParser& parser);
    void resolve();
};

// The full path of `name` on PATH (and the sbin directories), empty if there is none.
std::string find_program(const std::string& name);

class Session {
public:
    // Makes the bench a child subreaper (orphans of its servers come back to it), ignores
    // SIGPIPE, starts the janitor, arms the watchdog for `watchdog_seconds` in all, and makes
    // the temporary directory base(), which the janitor removes unless `keep`.
    Session(std::string program, unsigned watchdog_seconds, bool keep);
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    const std::string& base() const { return base_; }

    // Runs `body` as the case `name` if `options` select it (the watchdog blames it on that
    // case); if it throws, says so on stderr and the run has broken.
    void attempt(const bench::Options& options, const std::string& name,
                 const std::function<void()>& body);
    void broke() { broke_ = true; }

    // The end of the run (after the report): disarms the watchdog, removes base() unless
    // `keep`, stops the janitor. The exit code: 1 if a case broke, else 0.
    int finish();

private:
    std::string program_;
    bool keep_;
    std::string base_;
    bool broke_ = false;
};

} // namespace bench::broker
