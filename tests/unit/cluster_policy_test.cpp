// The cluster's pure policy: which worker gets the next connection, and what an exit costs.
#include <bus/cluster_supervisor.hpp>

#include <gtest/gtest.h>

namespace {

using bus::cluster::Candidate;
using bus::cluster::Mode;
using bus::cluster::pick;
using bus::cluster::RestartPolicy;
using bus::cluster::RestartTracker;
using std::chrono::milliseconds;

std::vector<std::size_t> picks(Mode mode, const std::vector<Candidate>& c, int n) {
    std::size_t cursor = 0;
    std::vector<std::size_t> out;
    for (int i = 0; i < n; ++i)
        out.push_back(pick(mode, c, cursor).value());
    return out;
}

TEST(ClusterDispatch, RoundRobinTakesReadyWorkersInTurn) {
    std::vector<Candidate> c = {{true, 0}, {false, 0}, {true, 0}, {true, 0}};
    EXPECT_EQ(picks(Mode::round_robin, c, 6), (std::vector<std::size_t>{0, 2, 3, 0, 2, 3}));
}

TEST(ClusterDispatch, NoReadyWorkerPicksNone) {
    std::size_t cursor = 0;
    EXPECT_FALSE(pick(Mode::round_robin, {{false, 0}, {false, 0}}, cursor));
    EXPECT_FALSE(pick(Mode::least_connections, {}, cursor));
}

TEST(ClusterDispatch, LeastConnectionsTakesTheLeastLoadedReadyWorker) {
    std::size_t cursor = 0;
    std::vector<Candidate> c = {{true, 5}, {true, 2}, {false, 0}, {true, 3}};
    EXPECT_EQ(pick(Mode::least_connections, c, cursor), 1u);
    c[1].load = 9;
    EXPECT_EQ(pick(Mode::least_connections, c, cursor), 3u);
}

TEST(ClusterDispatch, LeastConnectionsBreaksTiesRoundRobin) {
    std::vector<Candidate> c = {{true, 1}, {true, 1}, {true, 1}};
    EXPECT_EQ(picks(Mode::least_connections, c, 4), (std::vector<std::size_t>{0, 1, 2, 0}));
}

TEST(ClusterRestart, QuickExitsBackOffExponentiallyThenError) {
    RestartPolicy p;
    p.max_restarts = 4;
    p.min_uptime = milliseconds(1000);
    p.restart_delay = milliseconds(100);
    p.max_restart_delay = milliseconds(1000);
    RestartTracker t;
    auto d = t.on_exit(p, 1, 0, milliseconds(10));
    EXPECT_EQ(d.action, RestartTracker::Action::restart);
    EXPECT_EQ(d.delay, milliseconds(200));
    d = t.on_exit(p, 1, 0, milliseconds(10));
    EXPECT_EQ(d.delay, milliseconds(400));
    d = t.on_exit(p, 0, 9, milliseconds(10)); // killed by a signal: an exit like any other
    EXPECT_EQ(d.delay, milliseconds(800));
    EXPECT_EQ(t.on_exit(p, 1, 0, milliseconds(10)).action, RestartTracker::Action::errored);
    EXPECT_EQ(t.restarts(), 3);
}

TEST(ClusterRestart, DelayIsCapped) {
    RestartPolicy p;
    p.max_restarts = 100;
    p.restart_delay = milliseconds(100);
    p.max_restart_delay = milliseconds(1000);
    RestartTracker t;
    RestartTracker::Decision d{};
    for (int i = 0; i < 10; ++i)
        d = t.on_exit(p, 1, 0, milliseconds(0));
    EXPECT_EQ(d.delay, milliseconds(1000));
}

TEST(ClusterRestart, AnExitAfterMinUptimeStartsTheCountAgain) {
    RestartPolicy p;
    p.max_restarts = 2;
    p.min_uptime = milliseconds(1000);
    p.restart_delay = milliseconds(100);
    RestartTracker t;
    EXPECT_EQ(t.on_exit(p, 1, 0, milliseconds(10)).action, RestartTracker::Action::restart);
    auto d = t.on_exit(p, 1, 0, milliseconds(5000)); // it ran long enough
    EXPECT_EQ(d.action, RestartTracker::Action::restart);
    EXPECT_EQ(d.delay, milliseconds(100));
    EXPECT_EQ(t.quick_exits(), 0);
    EXPECT_EQ(t.on_exit(p, 1, 0, milliseconds(10)).action, RestartTracker::Action::restart);
    EXPECT_EQ(t.on_exit(p, 1, 0, milliseconds(10)).action, RestartTracker::Action::errored);
}

TEST(ClusterRestart, StopExitCodesAreNotRestarted) {
    RestartPolicy p;
    p.stop_exit_codes = {0, 7};
    RestartTracker t;
    EXPECT_EQ(t.on_exit(p, 7, 0, milliseconds(10)).action, RestartTracker::Action::stop);
    EXPECT_EQ(t.on_exit(p, 0, 0, milliseconds(10)).action, RestartTracker::Action::stop);
    // A signal is never a stop exit code, whatever the number.
    EXPECT_EQ(t.on_exit(p, -1, 7, milliseconds(10)).action, RestartTracker::Action::restart);
}

} // namespace
