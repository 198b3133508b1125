#include "bus/cluster_supervisor.hpp"

#include <algorithm>

namespace bus::cluster {

RestartTracker::Decision RestartTracker::on_exit(const RestartPolicy& policy, int exit_code,
                                                 int term_signal, milliseconds uptime) {
    if (term_signal == 0 && std::find(policy.stop_exit_codes.begin(), policy.stop_exit_codes.end(),
                                      exit_code) != policy.stop_exit_codes.end())
        return {Action::stop};
    if (uptime < policy.min_uptime)
        ++quick_;
    else
        quick_ = 0;
    if (quick_ >= policy.max_restarts)
        return {Action::errored};
    ++restarts_;
    // restart_delay, doubled per quick exit in a row (none after a run that lasted).
    auto delay = policy.restart_delay;
    for (int i = 0; i < quick_ && delay < policy.max_restart_delay; ++i)
        delay *= 2;
    return {Action::restart, std::min(delay, policy.max_restart_delay)};
}

std::optional<std::size_t> pick(Mode mode, const std::vector<Candidate>& candidates,
                                std::size_t& cursor) {
    const std::size_t n = candidates.size();
    if (n == 0)
        return std::nullopt;
    std::optional<std::size_t> best;
    for (std::size_t k = 0; k < n; ++k) {
        const std::size_t i = (cursor + k) % n;
        if (!candidates[i].ready)
            continue;
        if (mode == Mode::round_robin) {
            best = i;
            break;
        }
        if (!best || candidates[i].load < candidates[*best].load)
            best = i;
    }
    if (best)
        cursor = (*best + 1) % n;
    return best;
}

} // namespace bus::cluster
