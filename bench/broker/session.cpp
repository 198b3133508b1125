#include "session.hpp"

#include "common/process.hpp"
#include "common/watchdog.hpp"
#include "harness.hpp"

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>

#include <sys/prctl.h>
#include <unistd.h>

namespace bench::broker {

void ServerFlags::add_to(bench::OptionParser& parser) {
    parser.add("--busd", "PATH", [this](std::string_view v) { busd = v; });
    parser.add("--keep", [this] { keep = true; });
}

void ServerFlags::resolve() {
    if (busd.empty())
        busd = bench::program_dir() + "/busd";
}

std::string find_program(const std::string& name) {
    std::string path = std::getenv("PATH") ? std::getenv("PATH") : "";
    path += ":/usr/sbin:/sbin:/usr/bin:/bin";
    std::size_t pos = 0;
    while (pos <= path.size()) {
        const std::size_t colon = std::min(path.find(':', pos), path.size());
        const std::string candidate = path.substr(pos, colon - pos) + "/" + name;
        if (colon > pos && ::access(candidate.c_str(), X_OK) == 0)
            return candidate;
        pos = colon + 1;
    }
    return {};
}

Session::Session(std::string program, unsigned watchdog_seconds, bool keep)
    : program_(std::move(program)), keep_(keep) {
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
    std::signal(SIGPIPE, SIG_IGN);
    janitor::start();
    // One alarm for the whole run, which names the case it fired in; the janitor stops what
    // is left.
    bench::watchdog::install(program_);
    bench::watchdog::arm(watchdog_seconds);
    base_ = make_temp_dir(program_);
    if (keep_)
        std::fprintf(stderr, "%s: keeping %s\n", program_.c_str(), base_.c_str());
    else
        janitor::track_path(base_);
}

void Session::attempt(const bench::Options& options, const std::string& name,
                      const std::function<void()>& body) {
    if (!options.selected(name))
        return;
    bench::watchdog::enter(name);
    try {
        body();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s: %s broke: %s\n", program_.c_str(), name.c_str(), e.what());
        broke_ = true;
    }
}

int Session::finish() {
    bench::watchdog::disarm();
    if (!keep_) {
        remove_tree(base_);
        janitor::untrack_path(base_);
    }
    janitor::stop();
    if (broke_)
        std::fprintf(stderr, "%s: some cases broke (see above)\n", program_.c_str());
    return broke_ ? 1 : 0;
}

} // namespace bench::broker
