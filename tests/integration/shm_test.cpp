// bus::shm::Queue between real processes: this binary re-runs itself as producer and consumer
// children (`--child MODE ARGS...`, as libuv's test-ipc does). Millions of checksummed,
// sequence-numbered records in every mode; producers and consumers SIGKILLed at random points
// and restarted; the survivors must see errc::peer_dead and the queue must carry on.
//
// BUS_SHM_STRESS_RECORDS=N raises the record counts (default: a million per mode).
#include "../support/shm_records.hpp"
#include "../support/temp_dir.hpp"
#include "../support/test_support.hpp"

#include "shm/layout.hpp"
#include "shm/segment.hpp"

#include <bus/shm_queue.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace {

namespace shm = bus::shm;
using bus::test::wait_until;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::string self_exe;

// --- children -------------------------------------------------------------------------------

// A child process: this binary with `--child args...`. Killed and reaped if still running when
// dropped.
class Child {
public:
    explicit Child(std::vector<std::string> args, std::vector<std::string> env = {}) {
        args.insert(args.begin(), {self_exe, "--child"});
        std::vector<char*> argv;
        for (auto& a : args)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        std::vector<std::string> envs;
        for (char** e = environ; *e; ++e)
            envs.emplace_back(*e);
        envs.insert(envs.end(), env.begin(), env.end());
        std::vector<char*> envp;
        for (auto& e : envs)
            envp.push_back(e.data());
        envp.push_back(nullptr);
        if (::posix_spawn(&pid_, self_exe.c_str(), nullptr, nullptr, argv.data(), envp.data()) != 0)
            pid_ = -1;
    }
    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;
    ~Child() {
        if (pid_ > 0 && !status_) {
            ::kill(pid_, SIGKILL);
            wait(10s);
        }
    }

    pid_t pid() const { return pid_; }
    bool running() const { return pid_ > 0 && !status_; }
    void kill() {
        if (!running())
            return; // never signal a reaped pid: it may be someone else's now
        ::kill(pid_, SIGKILL);
        wait(10s);
    }
    // The exit status once the child has ended (nullopt at the timeout).
    std::optional<int> wait(std::chrono::milliseconds timeout = 60s) {
        wait_until(
            [&] {
                int status = 0;
                if (!status_ && ::waitpid(pid_, &status, WNOHANG) == pid_)
                    status_ = status;
                return status_.has_value();
            },
            timeout);
        return status_;
    }
    bool exited_zero(std::chrono::milliseconds timeout = 60s) {
        auto s = wait(timeout);
        return s && WIFEXITED(*s) && WEXITSTATUS(*s) == 0;
    }

private:
    pid_t pid_ = -1;
    std::optional<int> status_;
};

// A file of one byte per sequence number, shared by mapping, where consumers count what they
// saw (so a consumer that is SIGKILLed leaves its account behind).
class SeenFile {
public:
    explicit SeenFile(std::uint64_t n) : path_((dir_ / "seen")), size_(n) {
        const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(n)) != 0)
            throw std::runtime_error("seen file");
        map_ = static_cast<std::uint8_t*>(
            ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
        ::close(fd);
    }
    ~SeenFile() { ::munmap(map_, size_); }
    const std::string& path() const { return path_; }
    std::uint8_t operator[](std::uint64_t i) const { return map_[i]; }

private:
    bus::test::TempDir dir_;
    std::string path_;
    std::uint64_t size_;
    std::uint8_t* map_;
};

int fail(const std::string& what) {
    std::fprintf(stderr, "child: %s\n", what.c_str());
    return 1;
}

// BUS_SHM_TEST_START_DELAY_MS=N: a child sleeps that long before it opens the queue, as one
// that is slow to start on a loaded machine (exec, dynamic linking, a busy CPU) would. (The
// delay is the behaviour a test asks for, not a wait for something.)
shm::Queue open_retrying(const std::string& name, shm::Role role) {
    if (const char* delay = std::getenv("BUS_SHM_TEST_START_DELAY_MS"))
        std::this_thread::sleep_for(std::chrono::milliseconds(std::atoll(delay)));
    // The parent may not have created it yet (it throws, ending the child, after 5 s).
    auto q = shm::Queue::open(name, role);
    wait_until([&] { return q || bool(q = shm::Queue::open(name, role)); }, 5s);
    return std::move(q).value();
}

// produce NAME ID COUNT SPREAD SPIN_NS: COUNT records (0 = until killed) from producer ID.
int child_produce(const std::vector<std::string>& a) {
    auto q = open_retrying(a[0], shm::Role::producer);
    const auto id = static_cast<std::uint32_t>(std::stoul(a[1]));
    const std::uint64_t count = std::stoull(a[2]);
    const std::size_t spread = std::stoul(a[3]);
    q.set_spin(std::chrono::nanoseconds(std::stoll(a[4])));
    for (std::uint64_t seq = 0; count == 0 || seq < count; ++seq) {
        auto slot = q.reserve(bus::test::record_size(id, seq, spread), 30s);
        if (!slot)
            return fail("reserve: " + slot.error().message());
        bus::test::write_record(slot.value(), id, seq);
        q.commit();
    }
    return 0;
}

// consume NAME PRODUCERS TOTAL SPIN_NS [create]: checks TOTAL records from PRODUCERS producers.
int child_consume(const std::vector<std::string>& a) {
    const std::size_t producers = std::stoul(a[1]);
    const std::uint64_t total = std::stoull(a[2]);
    std::optional<shm::Queue> q;
    if (a.size() > 4 && a[4] == "create") {
        shm::CreateOptions options;
        options.role = shm::Role::consumer;
        options.mode = producers > 1 ? shm::Mode::mpsc : shm::Mode::spsc;
        auto created = shm::Queue::create(a[0], 1 << 16, options);
        if (!created)
            return fail("create: " + created.error().message());
        q.emplace(std::move(created).value());
    } else {
        q.emplace(open_retrying(a[0], shm::Role::consumer));
    }
    q->set_spin(std::chrono::nanoseconds(std::stoll(a[3])));
    bus::test::SequenceCheck order(producers);
    for (std::uint64_t i = 0; i < total; ++i) {
        auto r = q->front(30s);
        if (!r)
            return fail("front: " + r.error().message());
        bus::test::RecordHead head;
        if (auto e = bus::test::check_record(r.value(), head); !e.empty())
            return fail(e);
        if (auto e = order.take(head); !e.empty())
            return fail(e);
        q->release();
    }
    return 0;
}

// count NAME SEEN_FILE: counts every record's seq in the seen file, until killed. Checks each
// record, and that seqs follow each other within its own life.
int child_count(const std::vector<std::string>& a) {
    auto q = open_retrying(a[0], shm::Role::consumer);
    const int fd = ::open(a[1].c_str(), O_RDWR | O_CLOEXEC);
    struct stat st {};
    if (fd < 0 || ::fstat(fd, &st) != 0)
        return fail("seen file");
    auto* seen = static_cast<std::uint8_t*>(::mmap(nullptr, static_cast<std::size_t>(st.st_size),
                                                   PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    std::optional<std::uint64_t> last;
    for (;;) {
        auto r = q.front(30s);
        if (!r)
            return fail("front: " + r.error().message());
        bus::test::RecordHead head;
        if (auto e = bus::test::check_record(r.value(), head); !e.empty())
            return fail(e);
        if (last && head.seq != *last + 1)
            return fail("seq " + std::to_string(head.seq) + " after " + std::to_string(*last));
        last = head.seq;
        if (head.seq >= static_cast<std::uint64_t>(st.st_size))
            return fail("seq out of range");
        // Counted before release: a kill between the two shows as a duplicate, never a loss.
        __atomic_fetch_add(&seen[head.seq], 1, __ATOMIC_RELAXED);
        q.release();
    }
}

// reserve-and-die NAME: claims a record in an mpsc queue, writes half of it, and dies.
int child_reserve_and_die(const std::vector<std::string>& a) {
    auto q = open_retrying(a[0], shm::Role::producer);
    auto slot = q.try_reserve(100);
    if (!slot)
        return fail("reserve: " + slot.error().message());
    std::memset(slot.value().data(), 0x77, 50);
    ::raise(SIGKILL);
    return 1;
}

// push-and-die NAME ID COUNT: COUNT records from producer ID, then reserves one more, writes
// half of it, and dies between reserve() and commit().
int child_push_and_die(const std::vector<std::string>& a) {
    auto q = open_retrying(a[0], shm::Role::producer);
    const auto id = static_cast<std::uint32_t>(std::stoul(a[1]));
    const std::uint64_t count = std::stoull(a[2]);
    for (std::uint64_t seq = 0; seq < count; ++seq) {
        auto slot = q.try_reserve(bus::test::record_size(id, seq, 400));
        if (!slot)
            return fail("reserve: " + slot.error().message());
        bus::test::write_record(slot.value(), id, seq);
        q.commit();
    }
    auto slot = q.try_reserve(bus::test::record_size(id, count, 400));
    if (!slot)
        return fail("reserve: " + slot.error().message());
    bus::test::write_record(slot.value().first(slot.value().size() / 2), id, count);
    ::raise(SIGKILL);
    return 1;
}

// wait-room NAME SIZE: asks for SIZE bytes of a full queue and sleeps (no spinning) until
// killed.
int child_wait_room(const std::vector<std::string>& a) {
    auto q = open_retrying(a[0], shm::Role::producer);
    q.set_spin(std::chrono::nanoseconds::zero());
    auto slot = q.reserve(std::stoul(a[1]), 60s);
    return fail(slot ? "reserve found room" : "reserve: " + slot.error().message());
}

// attach NAME ROLE: opens the queue as ROLE (producer or consumer) and waits to be killed.
int child_attach(const std::vector<std::string>& a) {
    auto q = open_retrying(a[0], a[1] == "producer" ? shm::Role::producer : shm::Role::consumer);
    for (;;)
        ::pause();
}

// produce-and-leave NAME COUNT STAMP_FILE: COUNT records from producer 0; once the consumer
// has read them, and then has had 100 ms to fall asleep waiting for more (the behaviour the
// test wants, not a wait for something), writes the steady clock's time (the same clock in
// every process) to STAMP_FILE and exits normally, its handle destroyed on the way out.
int child_produce_and_leave(const std::vector<std::string>& a) {
    auto q = open_retrying(a[0], shm::Role::producer);
    const std::uint64_t count = std::stoull(a[1]);
    for (std::uint64_t seq = 0; seq < count; ++seq) {
        auto slot = q.reserve(bus::test::record_size(0, seq, 400), 30s);
        if (!slot)
            return fail("reserve: " + slot.error().message());
        bus::test::write_record(slot.value(), 0, seq);
        q.commit();
    }
    if (!wait_until([&] { return q.stats().depth_bytes == 0; }, 30s))
        return fail("the consumer never read the records");
    std::this_thread::sleep_for(100ms);
    FILE* stamp = std::fopen(a[2].c_str(), "w");
    if (!stamp)
        return fail("stamp file");
    std::fprintf(stamp, "%lld\n", static_cast<long long>(Clock::now().time_since_epoch().count()));
    std::fclose(stamp);
    return 0;
}

// create-push-die NAME: creates the queue, leaves a record in it, and dies.
int child_create_push_die(const std::vector<std::string>& a) {
    auto q = shm::Queue::create(a[0], 4096);
    if (!q)
        return fail("create: " + q.error().message());
    const char text[] = "left by the dead";
    if (auto ec = q.value().try_push(std::as_bytes(std::span(text))))
        return fail(ec.message());
    ::raise(SIGKILL);
    return 1;
}

int child_main(const std::string& mode, const std::vector<std::string>& args) {
    try {
        if (mode == "produce")
            return child_produce(args);
        if (mode == "consume")
            return child_consume(args);
        if (mode == "count")
            return child_count(args);
        if (mode == "reserve-and-die")
            return child_reserve_and_die(args);
        if (mode == "attach")
            return child_attach(args);
        if (mode == "wait-room")
            return child_wait_room(args);
        if (mode == "push-and-die")
            return child_push_and_die(args);
        if (mode == "produce-and-leave")
            return child_produce_and_leave(args);
        if (mode == "create-push-die")
            return child_create_push_die(args);
    } catch (const std::exception& e) {
        return fail(e.what());
    }
    return 3;
}

// --- tests ----------------------------------------------------------------------------------

class ShmProcesses : public ::testing::Test {
protected:
    void SetUp() override {
        name_ = "itest." + std::to_string(::getpid()) + "." +
                ::testing::UnitTest::GetInstance()->current_test_info()->name();
        rng_.seed(static_cast<unsigned>(::getpid()));
    }
    void TearDown() override { (void)shm::remove(name_, true); }

    shm::Queue create(shm::Mode mode, shm::Role role, std::size_t capacity = 1 << 16) {
        shm::CreateOptions options;
        options.mode = mode;
        options.role = role;
        auto q = shm::Queue::create(name_, capacity, options);
        if (!q)
            throw std::runtime_error("create: " + q.error().message());
        return std::move(q).value();
    }
    std::chrono::milliseconds random_ms(int lo, int hi) {
        return std::chrono::milliseconds(std::uniform_int_distribution<int>(lo, hi)(rng_));
    }

    std::string name_;
    std::mt19937 rng_;
};

struct Drained {
    std::string error;
    std::uint64_t records = 0;
    std::error_code last; // what the final front() said
};

// Reads until front() fails (peer_dead when every producer is dead) or `limit` records.
Drained drain(shm::Queue& q, bus::test::SequenceCheck& order, std::uint64_t limit,
              std::chrono::nanoseconds timeout = 10s) {
    Drained d;
    while (d.records < limit) {
        auto r = q.front(timeout);
        if (!r) {
            d.last = r.error();
            break;
        }
        bus::test::RecordHead head;
        d.error = bus::test::check_record(r.value(), head);
        if (d.error.empty())
            d.error = order.take(head);
        if (!d.error.empty())
            break;
        q.release();
        ++d.records;
    }
    return d;
}

// Waits until a live process holds the other end of `q`: a child just started has not
// necessarily attached yet, and until it has, a wait on `q` may report the one before it dead.
bool wait_attached(const shm::Queue& q, std::chrono::milliseconds timeout = 10s) {
    return wait_until([&] { return q.peer_alive(); }, timeout);
}

TEST_F(ShmProcesses, SpscMillionRecordsNothingLostNothingDuplicated) {
    const std::uint64_t n = bus::test::stress_records(1000000);
    auto q = create(shm::Mode::spsc, shm::Role::consumer);
    Child producer({"produce", name_, "0", std::to_string(n), "400", "20000"});
    bus::test::SequenceCheck order(1);
    const auto start = Clock::now();
    auto d = drain(q, order, n);
    EXPECT_EQ(d.error, "");
    EXPECT_EQ(d.records, n);
    EXPECT_TRUE(producer.exited_zero());
    std::printf(
        "[          ] %llu records in %lld ms\n", static_cast<unsigned long long>(n),
        static_cast<long long>(
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count()));
}

TEST_F(ShmProcesses, MpscMillionRecordsFromFourProducers) {
    const std::uint64_t per = bus::test::stress_records(1000000) / 4;
    auto q = create(shm::Mode::mpsc, shm::Role::consumer);
    std::vector<std::unique_ptr<Child>> producers;
    for (int i = 0; i < 4; ++i)
        producers.push_back(std::make_unique<Child>(std::vector<std::string>{
            "produce", name_, std::to_string(i), std::to_string(per), "400", "20000"}));
    bus::test::SequenceCheck order(4);
    auto d = drain(q, order, 4 * per);
    EXPECT_EQ(d.error, "");
    EXPECT_EQ(d.records, 4 * per);
    for (auto& p : producers)
        EXPECT_TRUE(p->exited_zero());
    EXPECT_EQ(q.stats().skipped, 0u);
    EXPECT_EQ(q.try_front().error(), bus::errc::empty);
}

TEST_F(ShmProcesses, SleepingWaitsOnATinyRingAcrossProcesses) {
    // No spinning, a ring of a few records: wake-ups cross processes nearly every record.
    const std::uint64_t n = bus::test::stress_records(1000000) / 10;
    for (auto mode : {shm::Mode::spsc, shm::Mode::mpsc}) {
        SCOPED_TRACE(mode == shm::Mode::spsc ? "spsc" : "mpsc");
        (void)shm::remove(name_, true);
        auto q = create(mode, shm::Role::consumer, 4096);
        q.set_spin(0ns);
        const int producers = mode == shm::Mode::spsc ? 1 : 2;
        std::vector<std::unique_ptr<Child>> children;
        for (int i = 0; i < producers; ++i)
            children.push_back(std::make_unique<Child>(std::vector<std::string>{
                "produce", name_, std::to_string(i), std::to_string(n / producers), "1000", "0"}));
        bus::test::SequenceCheck order(static_cast<std::size_t>(producers));
        const auto start = Clock::now();
        auto d = drain(q, order, n / producers * producers);
        EXPECT_EQ(d.error, "");
        EXPECT_EQ(d.records, n / producers * producers);
        for (auto& c : children)
            EXPECT_TRUE(c->exited_zero());
        // A lost wake-up costs a 20 ms liveness slice: a handful would show here.
        EXPECT_LT(Clock::now() - start, 30s);
    }
}

TEST_F(ShmProcesses, FenceModeQueueBetweenProcesses) {
    // The creator cannot use membarrier (forced off): every process on the queue then pays a
    // fence on each record, including those that could use membarrier.
    const std::uint64_t n = bus::test::stress_records(1000000) / 4;
    Child consumer({"consume", name_, "1", std::to_string(n), "0", "create"},
                   {"BUS_SHM_NO_MEMBARRIER=1"});
    Child producer({"produce", name_, "0", std::to_string(n), "400", "0"});
    EXPECT_TRUE(consumer.exited_zero());
    EXPECT_TRUE(producer.exited_zero());
}

TEST_F(ShmProcesses, KilledSpscProducerLeavesWholeRecordsAndTheConsumerPeerDead) {
    auto q = create(shm::Mode::spsc, shm::Role::consumer);
    constexpr int rounds = 5;
    bus::test::SequenceCheck order(rounds + 1);
    std::uint64_t total = 0;
    for (int round = 0; round < rounds; ++round) {
        Child producer({"produce", name_, std::to_string(round), "0", "400", "20000"});
        // Until it has attached, the consumer hears that the last one died (and a kill would
        // land before its loop): wait for it.
        ASSERT_TRUE(wait_attached(q)) << "round " << round;
        // Read for a while, then kill the producer at a random point in its loop.
        const auto kill_at = Clock::now() + random_ms(20, 120);
        while (Clock::now() < kill_at) {
            auto d = drain(q, order, 1000);
            ASSERT_EQ(d.error, "") << "round " << round;
            total += d.records;
        }
        producer.kill();
        const auto killed = Clock::now();
        // What it committed is still there, whole; then the consumer learns it died.
        auto d = drain(q, order, ~std::uint64_t{0});
        ASSERT_EQ(d.error, "") << "round " << round;
        EXPECT_EQ(d.last, bus::errc::peer_dead) << "round " << round;
        EXPECT_LT(Clock::now() - killed, 2s);
        total += d.records;
        EXPECT_GT(order.next(static_cast<std::size_t>(round)), 0u);
    }
    // A producer that comes back after all that is read as usual.
    Child last({"produce", name_, std::to_string(rounds), "1000", "400", "20000"});
    ASSERT_TRUE(wait_attached(q));
    auto d = drain(q, order, 1000);
    EXPECT_EQ(d.error, "");
    EXPECT_EQ(d.records, 1000u) << "front: " << d.last.message();
    EXPECT_TRUE(last.exited_zero());
    EXPECT_EQ(q.stats().skipped, 0u);
    std::printf("[          ] %llu records over %d killed producers\n",
                static_cast<unsigned long long>(total), rounds);
}

TEST_F(ShmProcesses, SpscProducerKilledMidRecordIsReplacedOnceTheNextAttaches) {
    auto q = create(shm::Mode::spsc, shm::Role::consumer);
    bus::test::SequenceCheck order(2);
    // Killed between reserve() and commit(), half-way through writing its 11th record.
    Child dying({"push-and-die", name_, "0", "10"});
    ASSERT_TRUE(dying.wait());
    ASSERT_TRUE(WIFSIGNALED(*dying.wait()));
    auto d = drain(q, order, ~std::uint64_t{0}, 5s);
    EXPECT_EQ(d.error, "");
    EXPECT_EQ(d.records, 10u); // the half-written record was never published
    EXPECT_EQ(d.last, bus::errc::peer_dead);
    // A replacement that is slow to start (as any is on a loaded machine). Until it attaches,
    // the producer has died and nobody has taken its place: a wait says so, at once, however
    // long its timeout. This is what a test that drains right after starting a producer must
    // allow for.
    Child next({"produce", name_, "1", "1000", "400", "20000"},
               {"BUS_SHM_TEST_START_DELAY_MS=500"});
    auto early = q.front(5s);
    ASSERT_FALSE(early);
    EXPECT_EQ(early.error(), bus::errc::peer_dead);
    // Once it has attached, waits are for its records again, written over the dead one's half
    // record; nothing is skipped.
    ASSERT_TRUE(wait_attached(q));
    d = drain(q, order, 1000);
    EXPECT_EQ(d.error, "");
    EXPECT_EQ(d.records, 1000u) << "front: " << d.last.message();
    EXPECT_TRUE(next.exited_zero());
    EXPECT_EQ(q.stats().skipped, 0u);
    EXPECT_EQ(q.try_front().error(), bus::errc::empty);
}

// Kills a peer the moment the other end sees it (peer_alive()), which is as early in its
// attach as a kill can land and still leave a peer that was seen: the survivor's wait must say
// peer_dead, not wait out its timeout for a peer that left nothing behind. A fresh queue each
// time: a dead slot left by an earlier kill would say peer_dead whatever the last one left.
TEST_F(ShmProcesses, PeerKilledTheMomentItIsSeenAttachedIsSeenDead) {
    for (auto survivor : {shm::Role::producer, shm::Role::consumer}) {
        const bool producer = survivor == shm::Role::producer;
        for (int attempt = 0; attempt < 20; ++attempt) {
            auto q = create(shm::Mode::spsc, survivor, 4096);
            q.set_spin(0ns);
            if (producer) {
                const char fill[] = "fill";
                while (!q.try_push(std::as_bytes(std::span(fill)))) {
                }
            }
            Child peer({"attach", name_, producer ? "consumer" : "producer"});
            const auto give_up = Clock::now() + 10s;
            while (!q.peer_alive() && Clock::now() < give_up) {
            }
            ASSERT_TRUE(q.peer_alive());
            peer.kill();
            const auto start = Clock::now();
            std::error_code ec;
            if (producer) {
                auto r = q.reserve(64, 3s);
                ec = r ? std::error_code{} : r.error();
            } else {
                auto r = q.front(3s);
                ec = r ? std::error_code{} : r.error();
            }
            EXPECT_EQ(ec, bus::errc::peer_dead)
                << (producer ? "producer" : "consumer") << " survivor, attempt " << attempt;
            EXPECT_LT(Clock::now() - start, 1s);
            (void)shm::remove(name_, true); // the next attempt creates it afresh
        }
    }
}

TEST_F(ShmProcesses, KilledMpscProducersAreSkippedAndTheOthersCarryOn) {
    auto q = create(shm::Mode::mpsc, shm::Role::consumer);
    constexpr int rounds = 6;
    bus::test::SequenceCheck order(rounds + 3);
    std::vector<std::unique_ptr<Child>> live;
    int next_id = 0;
    // Large records, so a kill often lands between reserve and commit.
    for (; next_id < 3; ++next_id)
        live.push_back(std::make_unique<Child>(std::vector<std::string>{
            "produce", name_, std::to_string(next_id), "0", "8000", "20000"}));
    for (int round = 0; round < rounds; ++round) {
        const auto kill_at = Clock::now() + random_ms(20, 100);
        while (Clock::now() < kill_at) {
            auto d = drain(q, order, 500);
            ASSERT_EQ(d.error, "") << "round " << round;
        }
        // Kill one at random and start another: the queue must never stall for long.
        const auto victim = std::uniform_int_distribution<std::size_t>(0, live.size() - 1)(rng_);
        live[victim]->kill();
        live[victim] = std::make_unique<Child>(std::vector<std::string>{
            "produce", name_, std::to_string(next_id++), "0", "8000", "20000"});
        auto d = drain(q, order, 2000);
        ASSERT_EQ(d.error, "") << "round " << round;
        EXPECT_EQ(d.records, 2000u) << "stalled after a kill in round " << round;
    }
    for (auto& p : live)
        p->kill();
    auto d = drain(q, order, ~std::uint64_t{0});
    EXPECT_EQ(d.error, "");
    EXPECT_EQ(d.last, bus::errc::peer_dead);
    std::printf("[          ] %llu records skipped after %d kills\n",
                static_cast<unsigned long long>(q.stats().skipped), rounds + 3);
}

TEST_F(ShmProcesses, ProducerDeadMidRecordIsSkippedAndCounted) {
    auto q = create(shm::Mode::mpsc, shm::Role::consumer);
    Child dying({"reserve-and-die", name_});
    ASSERT_TRUE(dying.wait());
    ASSERT_TRUE(WIFSIGNALED(*dying.wait()));
    auto p = shm::Queue::open(name_, shm::Role::producer);
    ASSERT_TRUE(p);
    const char after[] = "after the dead one";
    ASSERT_FALSE(p.value().try_push(std::as_bytes(std::span(after))));
    const auto start = Clock::now();
    auto r = q.front(5s);
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r.value().size(), sizeof after);
    EXPECT_LT(Clock::now() - start, 1s);
    q.release();
    EXPECT_EQ(q.stats().skipped, 1u);
}

// A producer SIGKILLed while asleep waiting for room cannot take back its announcement: left up,
// it would make every later release() pay a futex wake-up for nobody. The consumer finds its
// slot dead and takes it back, so after the kill no release wakes anyone (space_seq, the word
// wakers bump, stays put).
TEST_F(ShmProcesses, ProducerKilledAsleepForRoomCostsNoWakeUps) {
    auto q = create(shm::Mode::mpsc, shm::Role::consumer, 4096);
    auto p = shm::Queue::open(name_, shm::Role::producer);
    ASSERT_TRUE(p);
    const char one[] = "r";
    int records = 0;
    while (!p.value().try_push(std::as_bytes(std::span(one))))
        ++records;
    ASSERT_GE(records, 20);
    Child sleeper({"wait-room", name_, "2000"});
    wait_until([&] { return q.stats().waiting_producers == 1; });
    ASSERT_EQ(q.stats().waiting_producers, 1u) << "the child never slept";
    sleeper.kill();
    ASSERT_TRUE(sleeper.wait());
    EXPECT_EQ(q.stats().waiting_producers, 1u) << "nobody has looked yet";

    const int fd = ::shm_open(("/bus." + name_).c_str(), O_RDONLY | O_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    const std::size_t size = bus::shm::detail::control_size();
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    ASSERT_NE(map, MAP_FAILED);
    const auto* ctrl = static_cast<const bus::shm::detail::Control*>(map);
    const std::uint32_t wakes_before = ctrl->space_seq.load();
    for (int i = 0; i < 10; ++i) {
        ASSERT_TRUE(q.try_front());
        q.release();
    }
    EXPECT_EQ(q.stats().waiting_producers, 0u);
    EXPECT_EQ(ctrl->space_seq.load() - wakes_before, 0u) << "futex wake-ups for a dead producer";
    // A live producer that sleeps afterwards is still woken.
    while (!p.value().try_push(std::as_bytes(std::span(one)))) {
    }
    p.value().set_spin(std::chrono::nanoseconds::zero());
    std::atomic<bool> saw_it_sleep{false};
    std::thread release([&] {
        saw_it_sleep = wait_until([&] { return q.stats().waiting_producers == 1; });
        auto r = q.front(1s);
        if (r)
            q.release();
    });
    const auto start = Clock::now();
    EXPECT_FALSE(p.value().push(std::as_bytes(std::span(one)), 5s));
    EXPECT_LT(Clock::now() - start, 1s);
    release.join();
    EXPECT_TRUE(saw_it_sleep) << "the live producer never slept waiting for room";
    EXPECT_GT(ctrl->space_seq.load() - wakes_before, 0u);
    ::munmap(map, size);
}

// A lone mpsc producer reserves as spsc does (it holds the reservation lock across records):
// killed mid-record, it leaves nothing in the ring, and the consumer counts the record anyway.
TEST_F(ShmProcesses, LoneMpscProducerDeadMidRecordIsCountedAndThePeerDead) {
    auto q = create(shm::Mode::mpsc, shm::Role::consumer);
    Child dying({"push-and-die", name_, "0", "100"});
    ASSERT_TRUE(dying.wait());
    ASSERT_TRUE(WIFSIGNALED(*dying.wait()));
    bus::test::SequenceCheck order(1);
    auto d = drain(q, order, 1000, 5s);
    EXPECT_EQ(d.error, "");
    EXPECT_EQ(d.records, 100u);
    EXPECT_EQ(d.last, bus::errc::peer_dead);
    EXPECT_EQ(q.stats().skipped, 1u);
    EXPECT_EQ(q.stats().depth_records, 0u);
    // A producer after it takes the lock the dead one held.
    auto p = shm::Queue::open(name_, shm::Role::producer);
    ASSERT_TRUE(p);
    const char after[] = "after the dead one";
    ASSERT_FALSE(p.value().push(std::as_bytes(std::span(after)), 5s));
    auto r = q.front(5s);
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r.value().size(), sizeof after);
    EXPECT_EQ(q.stats().skipped, 1u);
}

// The lone producer holds the reservation lock across records; killed at a random point (often
// mid-record: the records are large), it leaves the lock biased to a dead owner and perhaps its
// `reserving` flag up. The consumer hears peer_dead, and the next producer takes the lock over.
TEST_F(ShmProcesses, LoneMpscProducerKilledAtRandomIsReplacedAndTheStreamGoesOn) {
    auto q = create(shm::Mode::mpsc, shm::Role::consumer);
    constexpr int rounds = 6;
    bus::test::SequenceCheck order(rounds);
    std::uint64_t total = 0;
    for (int round = 0; round < rounds; ++round) {
        Child producer({"produce", name_, std::to_string(round), "0", "8000", "20000"});
        ASSERT_TRUE(wait_attached(q)) << "round " << round;
        auto d = drain(q, order, 300);
        ASSERT_EQ(d.error, "") << "round " << round;
        ASSERT_EQ(d.records, 300u) << "stalled in round " << round << ": " << d.last.message();
        const auto kill_at = Clock::now() + random_ms(1, 30);
        while (Clock::now() < kill_at) {
            d = drain(q, order, 50);
            ASSERT_EQ(d.error, "") << "round " << round;
        }
        producer.kill();
        d = drain(q, order, ~std::uint64_t{0}, 5s);
        ASSERT_EQ(d.error, "") << "round " << round;
        EXPECT_EQ(d.last, bus::errc::peer_dead) << "round " << round;
        total += order.next(static_cast<std::size_t>(round));
    }
    const auto stats = q.stats();
    EXPECT_LE(stats.skipped, static_cast<std::uint64_t>(rounds));
    EXPECT_EQ(stats.depth_records, 0u);
    std::printf("[          ] %llu records, %llu skipped after %d kills\n",
                static_cast<unsigned long long>(total),
                static_cast<unsigned long long>(stats.skipped), rounds);
}

TEST_F(ShmProcesses, KilledConsumerLeavesRecordsToTheNextAndTheProducerPeerDead) {
    const std::uint64_t n = bus::test::stress_records(1000000) / 5;
    SeenFile seen(n);
    auto p = create(shm::Mode::spsc, shm::Role::producer);
    p.set_spin(20us);
    auto consumer = std::make_unique<Child>(std::vector<std::string>{"count", name_, seen.path()});
    // A kill point may come before the ring first fills: the consumer must be there by then,
    // or the kill finds no consumer to leave dead and the producer waits for one in vain.
    ASSERT_TRUE(wait_attached(p));
    // Five kills at random points of the stream, each early enough that the producer fills
    // the ring afterwards (a 64 KiB ring holds fewer than 2000 of these records) and so must
    // wait, and learn.
    std::vector<std::uint64_t> kill_at;
    for (int i = 0; i < 5; ++i)
        kill_at.push_back(std::uniform_int_distribution<std::uint64_t>(1, n - 5000)(rng_));
    std::sort(kill_at.begin(), kill_at.end(), std::greater<>());
    int kills = 0, peer_dead = 0;
    for (std::uint64_t seq = 0; seq < n;) {
        while (!kill_at.empty() && seq >= kill_at.back()) {
            kill_at.pop_back();
            if (consumer->running()) { // two points may fall in one consumer's life
                consumer->kill();
                ++kills;
            }
        }
        auto slot = p.reserve(bus::test::record_size(0, seq, 400), 10s);
        if (!slot && slot.error() == bus::errc::peer_dead) {
            // The survivor learned; a new consumer takes over what the dead one left.
            ++peer_dead;
            consumer =
                std::make_unique<Child>(std::vector<std::string>{"count", name_, seen.path()});
            ASSERT_TRUE(wait_attached(p));
            continue;
        }
        ASSERT_TRUE(slot) << slot.error().message();
        bus::test::write_record(slot.value(), 0, seq);
        p.commit();
        ++seq;
    }
    // Let the last consumer finish, then stop it.
    // Empty is head == tail (depth_bytes). depth_records is produced - consumed, and a consumer
    // killed between its two stores in release() (head, then consumed) leaves consumed one
    // short for good: approximate after a crash, as documented.
    wait_until([&] { return p.stats().depth_bytes == 0; }, 30s);
    EXPECT_EQ(p.stats().depth_bytes, 0u);
    EXPECT_LE(p.stats().depth_records, static_cast<std::uint64_t>(kills));
    consumer->kill();
    EXPECT_GE(kills, 1);
    EXPECT_EQ(peer_dead, kills);
    std::uint64_t missing = 0, duplicates = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
        missing += seen[i] == 0;
        duplicates += seen[i] > 1 ? seen[i] - 1 : 0;
    }
    EXPECT_EQ(missing, 0u);
    // A consumer killed between counting a record and releasing it sees it again: at most one
    // per kill, and never a loss.
    EXPECT_LE(duplicates, static_cast<std::uint64_t>(kills));
}

TEST_F(ShmProcesses, StaleQueueOfADeadOwnerIsSeenAndReplaced) {
    Child dying({"create-push-die", name_});
    ASSERT_TRUE(dying.wait());
    auto info = shm::inspect(name_);
    ASSERT_TRUE(info) << info.error().message();
    EXPECT_FALSE(info.value().error);
    EXPECT_EQ(info.value().owner_pid, dying.pid());
    EXPECT_FALSE(info.value().owner_alive);
    EXPECT_FALSE(info.value().in_use);
    EXPECT_EQ(info.value().producers, 0);
    EXPECT_EQ(info.value().stats.depth_records, 1u);
    // The record survived its producer: a consumer can still have it.
    {
        auto c = shm::Queue::open(name_, shm::Role::consumer);
        ASSERT_TRUE(c);
        auto r = c.value().try_front();
        ASSERT_TRUE(r);
        EXPECT_EQ(std::string(reinterpret_cast<const char*>(r.value().data())), "left by the dead");
        // Not released: the record stays, so the segment stays.
    }
    // create() replaces it, since no live process holds it.
    auto q = shm::Queue::create(name_, 8192);
    ASSERT_TRUE(q) << q.error().message();
    EXPECT_EQ(q.value().stats().depth_records, 0u);
    EXPECT_EQ(q.value().capacity(), 8192u);
}

} // namespace

TEST_F(ShmProcesses, ProducerExitingNormallyIsPeerClosedAfterItsLastRecord) {
    constexpr std::uint64_t n = 1000;
    auto q = create(shm::Mode::spsc, shm::Role::consumer);
    q.set_spin(0ns); // the consumer sleeps in the kernel when the producer leaves
    bus::test::TempDir dir;
    const std::string stamp = dir / "closed_at";
    Child producer({"produce-and-leave", name_, std::to_string(n), stamp});
    bus::test::SequenceCheck order(1);
    // The consumer's own deadline (10 s) is far beyond the promise (100 ms): peer_closed
    // instead of timeout is the producer's exit being heard.
    auto d = drain(q, order, n + 1, 10s);
    const auto heard_at = Clock::now();
    EXPECT_EQ(d.error, "");
    EXPECT_EQ(d.records, n) << "every record before the departure";
    EXPECT_EQ(d.last, bus::errc::peer_closed) << d.last.message();
    ASSERT_TRUE(producer.exited_zero());
    long long closed_at = 0;
    FILE* f = std::fopen(stamp.c_str(), "r");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fscanf(f, "%lld", &closed_at), 1);
    std::fclose(f);
    // The promise is 100 ms from the producer's exit; printed, not asserted (the stamp is
    // taken just before its handle is destroyed, so this includes the detach and the exit).
    const auto latency = heard_at - Clock::time_point(Clock::duration(closed_at));
    std::printf("[          ] peer_closed heard %lld us after the producer process began to "
                "exit\n",
                static_cast<long long>(
                    std::chrono::duration_cast<std::chrono::microseconds>(latency).count()));
    // Nothing more will come, and the wait says so again at once.
    EXPECT_EQ(q.front(10s).error(), bus::errc::peer_closed);
}

int main(int argc, char** argv) {
    self_exe = std::filesystem::canonical("/proc/self/exe").string();
    if (argc >= 3 && std::string_view(argv[1]) == "--child")
        return child_main(argv[2], std::vector<std::string>(argv + 3, argv + argc));
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
