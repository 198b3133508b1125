// The `bus` command as a person uses it: the real busd, a real publisher (cli_test_publisher,
// the only program built with testonly.v1.Reading), and `bus sub|pub|req|serve|ls|status|types`
// as subprocesses whose output and exit codes are checked.
#include "../support/busd.hpp"
#include "../support/other_uid.hpp"
#include "../support/temp_dir.hpp"
#include "../support/test_support.hpp"

#include <utility> // before Asio's awaitable.hpp (Boost 1.74 misses it: DESIGN.md)

#include <bus/child_process.hpp>
#include <bus/client.hpp>
#include <bus/shm_queue.hpp>
#include <bus/v1/broker.pb.h>
#include <bus/v1/cluster.pb.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <sys/wait.h>
#include <termios.h>

namespace {

using bus::test::Busd;
using bus::test::run_until;
using bus::test::TempDir;
using namespace std::chrono_literals;
using nlohmann::json;

const std::string bus_bin = BUS_CLI;
const std::string publisher_bin = CLI_TEST_PUBLISHER;
const std::string proto_dir = CLI_TEST_PROTO_DIR;

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream s(text);
    for (std::string line; std::getline(s, line);)
        if (!line.empty())
            out.push_back(line);
    return out;
}

// A program run as from a shell: stdin from a string, stdout and stderr to files. Destroying
// it kills the program if it still runs (ChildProcess does), so no test leaves one behind.
class Command {
public:
    Command(boost::asio::io_context& io, const std::vector<std::string>& argv,
            const std::string& input = {})
        : io_(io) {
        std::ofstream((dir_ / "in")) << input;
        std::vector<std::string> sh = {
            "/bin/sh", "-c", "exec \"$@\" <\"$CMD_IN\" >\"$CMD_OUT\" 2>\"$CMD_ERR\"", "sh"};
        sh.insert(sh.end(), argv.begin(), argv.end());
        bus::SpawnOptions options;
        options.env = {"CMD_IN=" + (dir_ / "in"), "CMD_OUT=" + (dir_ / "out"),
                       "CMD_ERR=" + (dir_ / "err"), "NO_COLOR="};
        auto p = bus::spawn(io_, sh, options);
        EXPECT_TRUE(p) << p.error().message();
        if (p) {
            process_ = std::move(p).value();
            process_->on_exit([this](int code, int signal) {
                code_ = code;
                signal_ = signal;
            });
        }
    }
    ~Command() {
        process_.reset(); // kills and reaps a child still running (before dir_ goes)
    }
    // Waits for the exit (bounded, so a hung command fails the test instead of hanging it).
    bool wait() {
        return process_ && run_until(
                               io_, [&] { return code_.has_value(); }, 60s);
    }
    bool exited() const { return code_.has_value(); }
    int code() const { return code_.value_or(-100); }
    int signal() const { return signal_; }
    std::string out() const { return slurp((dir_ / "out")); }
    std::string err() const { return slurp((dir_ / "err")); }
    void kill(int sig) {
        if (process_ && process_->running())
            process_->kill(sig);
    }

private:
    boost::asio::io_context& io_;
    TempDir dir_;
    std::shared_ptr<bus::ChildProcess> process_;
    std::optional<int> code_;
    int signal_ = 0;
};

// A program in a pseudo-terminal, as a person at a terminal runs it. Destroying it kills and
// reaps the program if it still runs.
class PtyCommand {
public:
    explicit PtyCommand(const std::vector<std::string>& args) {
        std::vector<char*> argv;
        for (const auto& a : args)
            argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        winsize size{};
        size.ws_row = 50;
        size.ws_col = 160;
        pid_ = ::forkpty(&master_, nullptr, nullptr, &size);
        if (pid_ == 0) {
            ::unsetenv("NO_COLOR");
            ::execv(argv[0], argv.data());
            ::_exit(127);
        }
        EXPECT_GT(pid_, 0) << "forkpty failed";
    }
    ~PtyCommand() {
        if (pid_ > 0 && !reaped_) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
        if (master_ >= 0)
            ::close(master_);
    }
    // Reads what the program writes until `done(output)` (bounded, so a program that never
    // shows it fails the test instead of hanging it).
    bool read_until(const std::function<bool(const std::string&)>& done) {
        const auto limit = std::chrono::steady_clock::now() + 60s;
        while (!done(output_) && std::chrono::steady_clock::now() < limit) {
            pollfd p{master_, POLLIN, 0};
            if (::poll(&p, 1, 100) <= 0)
                continue;
            char buf[4096];
            const ssize_t n = ::read(master_, buf, sizeof buf);
            if (n <= 0)
                break; // the program exited (EIO)
            output_.append(buf, static_cast<std::size_t>(n));
        }
        return done(output_);
    }
    // Sends `signal` and returns the exit code (-1 if a signal ended it).
    int stop(int signal) {
        ::kill(pid_, signal);
        int status = 0;
        ::waitpid(pid_, &status, 0);
        reaped_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    // Reads what the program writes for `how_long`.
    void read_for(std::chrono::milliseconds how_long) {
        const auto until = std::chrono::steady_clock::now() + how_long;
        read_until([&](const std::string&) { return std::chrono::steady_clock::now() >= until; });
    }
    // Types `keys` at the program.
    void type(const std::string& keys) {
        EXPECT_EQ(::write(master_, keys.data(), keys.size()), static_cast<ssize_t>(keys.size()));
    }
    pid_t pid() const { return pid_; }
    // The terminal's local modes (c_lflag) as the program sees them now.
    tcflag_t local_modes() const {
        const int slave = ::open(::ptsname(master_), O_RDWR | O_NOCTTY);
        termios mode{};
        EXPECT_EQ(::tcgetattr(slave, &mode), 0);
        ::close(slave);
        return mode.c_lflag;
    }
    const std::string& output() const { return output_; }

private:
    pid_t pid_ = -1;
    int master_ = -1;
    bool reaped_ = false;
    std::string output_;
};

std::size_t count_of(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
        ++n;
    return n;
}

struct Ran {
    int code;
    std::string out, err;
};

class CliTest : public ::testing::Test {
protected:
    void SetUp() override { busd_ = std::make_unique<Busd>(io_); }
    void TearDown() override {
        client_.reset();
        busd_.reset();
    }

    std::vector<std::string> bus_argv(std::vector<std::string> args) const {
        std::vector<std::string> argv = {bus_bin, "-e", busd_->ipc()};
        argv.insert(argv.end(), args.begin(), args.end());
        return argv;
    }
    std::unique_ptr<Command> start(std::vector<std::string> args, const std::string& input = {}) {
        return std::make_unique<Command>(io_, bus_argv(std::move(args)), input);
    }
    Ran run(std::vector<std::string> args, const std::string& input = {}) {
        auto c = start(std::move(args), input);
        EXPECT_TRUE(c->wait()) << "bus did not exit";
        return {c->code(), c->out(), c->err()};
    }
    std::unique_ptr<Command> publisher(std::vector<std::string> args, bool unix = false) {
        std::vector<std::string> argv = {publisher_bin, unix ? busd_->unix() : busd_->ipc()};
        argv.insert(argv.end(), args.begin(), args.end());
        return std::make_unique<Command>(io_, argv);
    }
    void publish_readings(const std::string& subject, int count) {
        auto p = publisher({"pub", subject, std::to_string(count)});
        ASSERT_TRUE(p->wait());
        ASSERT_EQ(p->code(), 0) << p->err();
    }
    void register_reading_type() {
        auto p = publisher({"register"});
        ASSERT_TRUE(p->wait());
        ASSERT_EQ(p->code(), 0) << p->err();
    }

    // An in-test client that asks busd what it knows: how the test knows a `bus sub` has
    // subscribed or a service is served before it goes on (no sleeping).
    bus::Client& client() {
        if (!client_) {
            auto c = bus::Client::connect(io_, busd_->ipc());
            EXPECT_TRUE(c) << c.error().message();
            client_ = c.value();
        }
        return *client_;
    }
    template <class T>
    T ask(const std::string& what) {
        std::optional<std::error_code> result;
        T out;
        client().request_bytes(what, {}, 5s, [&](std::error_code ec, bus::Message& m) {
            result = ec;
            if (!ec)
                out.ParseFromString(std::string(m.payload()));
        });
        EXPECT_TRUE(run_until(io_, [&] { return result.has_value(); }));
        return out;
    }
    bool subscribed(const std::string& pattern) {
        return run_until(io_, [&] {
            const auto list = ask<bus::v1::SubscriptionList>("$sys.subscriptions");
            for (const auto& s : list.subscriptions())
                if (s.pattern() == pattern)
                    return true;
            return false;
        });
    }
    bool monitoring(const std::string& pattern) {
        return run_until(io_, [&] {
            const auto list = ask<bus::v1::SubscriptionList>("$sys.subscriptions");
            for (const auto& s : list.subscriptions())
                if (s.monitor() && s.pattern() == pattern)
                    return true;
            return false;
        });
    }
    bool served(const std::string& service) {
        return run_until(io_, [&] {
            const auto list = ask<bus::v1::ServiceList>("$sys.services");
            for (const auto& s : list.services())
                if (s.name() == service && s.instances_size() > 0)
                    return true;
            return false;
        });
    }

    boost::asio::io_context io_;
    std::unique_ptr<Busd> busd_;
    std::shared_ptr<bus::Client> client_;
};

// --- sub: decoding a type bus was not built with ------------------------------------------------

TEST_F(CliTest, BusIsNotBuiltWithTheTestOnlyType) {
    // What the decoding tests below rely on: the type reaches `bus` only through busd.
    EXPECT_EQ(slurp(bus_bin).find("testonly.v1"), std::string::npos);
    EXPECT_NE(slurp(publisher_bin).find("testonly.v1"), std::string::npos);
}

TEST_F(CliTest, SubJsonDecodesATypeFromTheRegistry) {
    auto sub = start({"sub", "--json", "--count", "3", "sensors.>"});
    ASSERT_TRUE(subscribed("sensors.>"));
    publish_readings("sensors.kitchen", 3);
    ASSERT_TRUE(sub->wait());
    ASSERT_EQ(sub->code(), 0) << sub->err();
    const auto lines = lines_of(sub->out());
    ASSERT_EQ(lines.size(), 3u) << sub->out();
    for (std::size_t i = 0; i < lines.size(); ++i) {
        ASSERT_TRUE(json::accept(lines[i])) << lines[i];
        const auto j = json::parse(lines[i]);
        EXPECT_EQ(j["subject"], "sensors.kitchen");
        EXPECT_EQ(j["type"], "testonly.v1.Reading");
        EXPECT_FALSE(j["source"].get<std::string>().empty());
        EXPECT_TRUE(j.contains("time"));
        const auto& p = j["payload"];
        EXPECT_EQ(p["sensor"], "thermo-1");
        EXPECT_EQ(p["seq"], i + 1);
        EXPECT_DOUBLE_EQ(p["celsius"].get<double>(), 20.5 + static_cast<double>(i + 1));
        EXPECT_EQ(p["place"]["room"], "lab");
        EXPECT_EQ(p["place"]["floor"], -1);
        EXPECT_EQ(p["tags"], json::array({"test", "only"}));
        EXPECT_EQ(p["taken"], "2023-11-14T22:13:20Z"); // the imported well-known type
    }
}

TEST_F(CliTest, SubTextShowsSubjectSourceTypeAndPayloadWithoutColoursWhenPiped) {
    auto sub = start({"sub", "-n", "1", "sensors.*"});
    ASSERT_TRUE(subscribed("sensors.*"));
    publish_readings("sensors.hall", 1);
    ASSERT_TRUE(sub->wait());
    ASSERT_EQ(sub->code(), 0) << sub->err();
    const auto lines = lines_of(sub->out());
    ASSERT_EQ(lines.size(), 1u) << sub->out();
    EXPECT_NE(lines[0].find("sensors.hall"), std::string::npos) << lines[0];
    EXPECT_NE(lines[0].find("testonly.v1.Reading"), std::string::npos) << lines[0];
    EXPECT_NE(lines[0].find("\"sensor\":\"thermo-1\""), std::string::npos) << lines[0];
    EXPECT_EQ(lines[0].find('\x1b'), std::string::npos) << "colour codes in piped output";
}

TEST_F(CliTest, SubRawShowsTheBytesUndecoded) {
    auto sub = start({"sub", "--raw", "--json", "-n", "1", "raw.>"});
    ASSERT_TRUE(subscribed("raw.>"));
    auto pub = run({"pub", "raw.bytes", "hello"});
    ASSERT_EQ(pub.code, 0) << pub.err;
    ASSERT_TRUE(sub->wait());
    const auto j = json::parse(lines_of(sub->out()).at(0));
    EXPECT_EQ(j["payload_base64"], "aGVsbG8=");
    EXPECT_FALSE(j.contains("payload"));
}

TEST_F(CliTest, SubTimeoutWithTooFewMessagesExitsWithTheTimeoutCode) {
    auto r = run({"sub", "--count", "2", "--timeout", "300ms", "quiet.subject"});
    EXPECT_EQ(r.code, 5) << r.err;
    EXPECT_NE(r.err.find("0 of 2"), std::string::npos) << r.err;
    // Without --count a timeout is just the end.
    EXPECT_EQ(run({"sub", "--timeout", "100ms", "quiet.subject"}).code, 0);
}

TEST_F(CliTest, SubQueueGroupMembersShareTheMessages) {
    auto a = start({"sub", "--json", "--queue", "workers", "--timeout", "30s", "-n", "2", "jobs"});
    auto b = start({"sub", "--json", "--queue", "workers", "--timeout", "30s", "-n", "2", "jobs"});
    ASSERT_TRUE(run_until(io_, [&] {
        int n = 0;
        const auto list = ask<bus::v1::SubscriptionList>("$sys.subscriptions");
        for (const auto& s : list.subscriptions())
            n += s.pattern() == "jobs" && s.queue_group() == "workers";
        return n == 2;
    }));
    ASSERT_EQ(run({"pub", "--count", "4", "jobs", "x"}).code, 0);
    ASSERT_TRUE(a->wait());
    ASSERT_TRUE(b->wait());
    EXPECT_EQ(a->code(), 0) << a->err();
    EXPECT_EQ(b->code(), 0) << b->err();
    EXPECT_EQ(lines_of(a->out()).size(), 2u);
    EXPECT_EQ(lines_of(b->out()).size(), 2u);
}

TEST_F(CliTest, CtrlCEndsSubCleanly) {
    auto sub = start({"sub", "never.published"});
    ASSERT_TRUE(subscribed("never.published"));
    sub->kill(SIGINT);
    ASSERT_TRUE(sub->wait());
    EXPECT_EQ(sub->signal(), 0);
    EXPECT_EQ(sub->code(), 0) << sub->err();
}

// --- pub ---------------------------------------------------------------------------------------

TEST_F(CliTest, PubEncodesJsonThroughTheRegistry) {
    register_reading_type();
    auto sub = start({"sub", "--json", "-n", "1", "cli.typed"});
    ASSERT_TRUE(subscribed("cli.typed"));
    auto pub = run({"pub", "--type", "testonly.v1.Reading", "cli.typed",
                    R"({"sensor": "from-cli", "celsius": 1.5, "place": {"floor": 3}})"});
    ASSERT_EQ(pub.code, 0) << pub.err;
    ASSERT_TRUE(sub->wait());
    const auto j = json::parse(lines_of(sub->out()).at(0));
    EXPECT_EQ(j["type"], "testonly.v1.Reading");
    EXPECT_EQ(j["payload"]["sensor"], "from-cli");
    EXPECT_EQ(j["payload"]["celsius"], 1.5);
    EXPECT_EQ(j["payload"]["place"]["floor"], 3);
}

TEST_F(CliTest, PubWithAProtoFileEncodesAndRegistersTheType) {
    // A fresh busd that has never heard of the type: --proto alone describes it, and
    // publishing registers it, so `bus sub` decodes it too.
    auto sub = start({"sub", "--json", "-n", "1", "cli.proto"});
    ASSERT_TRUE(subscribed("cli.proto"));
    auto pub = run({"pub", "--type", "testonly.v1.Reading", "--proto",
                    proto_dir + "/testonly/v1/sensor.proto", "-I", proto_dir, "cli.proto"},
                   R"({"sensor": "stdin", "tags": ["a", "b"]})");
    ASSERT_EQ(pub.code, 0) << pub.err;
    ASSERT_TRUE(sub->wait());
    const auto j = json::parse(lines_of(sub->out()).at(0));
    EXPECT_EQ(j["payload"]["sensor"], "stdin");
    EXPECT_EQ(j["payload"]["tags"], json::array({"a", "b"}));
}

TEST_F(CliTest, PubWithADescriptorSetEncodesTheType) {
    auto sub = start({"sub", "--json", "-n", "1", "cli.set"});
    ASSERT_TRUE(subscribed("cli.set"));
    auto pub =
        run({"pub", "--type", "testonly.v1.Reading", "--descriptor-set", CLI_TEST_DESCRIPTOR_SET,
             "cli.set", R"({"seq": 9, "taken": "2024-01-01T00:00:00Z"})"});
    ASSERT_EQ(pub.code, 0) << pub.err;
    ASSERT_TRUE(sub->wait());
    const auto j = json::parse(lines_of(sub->out()).at(0));
    EXPECT_EQ(j["payload"]["seq"], 9);
    EXPECT_EQ(j["payload"]["taken"], "2024-01-01T00:00:00Z");
    // A file that is not a descriptor set is a usage error that says how to make one.
    auto bad =
        run({"pub", "--type", "testonly.v1.Reading", "--descriptor-set", bus_bin, "cli.set", "{}"});
    EXPECT_EQ(bad.code, 2);
    EXPECT_NE(bad.err.find("--descriptor_set_out"), std::string::npos) << bad.err;
}

TEST_F(CliTest, PubRawBodyFromStdinWithHeadersAndACount) {
    auto sub = start({"sub", "--json", "--headers", "-n", "3", "plain"});
    ASSERT_TRUE(subscribed("plain"));
    auto pub =
        run({"pub", "--count", "3", "--header", "trace=abc", "-H", "k=v=w", "plain"}, "from stdin");
    ASSERT_EQ(pub.code, 0) << pub.err;
    ASSERT_TRUE(sub->wait());
    const auto lines = lines_of(sub->out());
    ASSERT_EQ(lines.size(), 3u);
    for (const auto& line : lines) {
        const auto j = json::parse(line);
        EXPECT_EQ(j["type"], "");
        EXPECT_EQ(j["payload_text"], "from stdin");
        EXPECT_EQ(j["headers"]["trace"], "abc");
        EXPECT_EQ(j["headers"]["k"], "v=w");
    }
}

// --- bad input: a clear error and the usage code, never a crash --------------------------------

TEST_F(CliTest, BadInputIsAUsageErrorThatSaysWhatIsWrong) {
    register_reading_type();
    struct Case {
        std::vector<std::string> args;
        std::string stdin_text, says;
    };
    const std::vector<Case> cases = {
        {{"pub", "--type", "no.such.Type", "s", "{}"}, "", "no.such.Type"},
        {{"pub", "--type", "testonly.v1.Reading", "s", "{not json"}, "", "not JSON"},
        {{"pub", "--type", "testonly.v1.Reading", "s", R"({"celsius": "hot"})"}, "", "celsius"},
        {{"pub", "--type", "testonly.v1.Reading", "s"}, "[1, 2]", "not JSON"},
        {{"sub", "a..b"}, "", "not a valid pattern"},
        {{"sub", "a.>.b"}, "", "not a valid pattern"},
        {{"sub", "ok", "--queue", "has space"}, "", "--queue"},
        {{"pub", "a.*", "x"}, "", "not a valid subject"},
        {{"pub", "$sys.x", "x"}, "", "$sys"},
        {{"pub", "--header", "novalue", "s", "x"}, "", "KEY=VALUE"},
        {{"sub", "--timeout", "soon", "s"}, "", "not a duration"},
        {{"sub", "--nope", "s"}, "", "--nope"},
        {{"sub"}, "", "pattern"},
        {{"ls", "nothing"}, "", "nothing"},
        {{"frobnicate"}, "", "frobnicate"},
        {{"types", "show", "no.such.Type"}, "", "not registered"},
        {{"pub", "--proto", "/nonexistent.proto", "--type", "a.B", "s"}, "", "nonexistent"},
    };
    for (const auto& c : cases) {
        auto r = run(c.args, c.stdin_text);
        std::string joined;
        for (const auto& a : c.args)
            joined += a + " ";
        EXPECT_EQ(r.code, 2) << joined << "\n" << r.err;
        EXPECT_NE(r.err.find(c.says), std::string::npos) << joined << "\nstderr: " << r.err;
    }
    // An unknown command is told with the list of every command there is.
    const auto unknown = run({"frobnicate"}).err;
    const auto from = unknown.find("commands: ");
    ASSERT_NE(from, std::string::npos) << unknown;
    std::set<std::string> listed;
    std::istringstream names(unknown.substr(from + 10, unknown.find(';', from) - from - 10));
    for (std::string name; std::getline(names >> std::ws, name, ',');)
        listed.insert(name);
    EXPECT_EQ(listed, (std::set<std::string>{"sub", "pub", "req", "serve", "ls", "status", "types",
                                             "monitor", "top", "bench", "shm", "cluster"}))
        << unknown;
    // `bus` without a command prints its help on stderr (with the exit codes) and fails.
    Command bare(io_, {bus_bin});
    ASSERT_TRUE(bare.wait());
    EXPECT_EQ(bare.code(), 2);
    const auto r = Ran{bare.code(), bare.out(), bare.err()};
    EXPECT_NE(r.err.find("Exit codes"), std::string::npos) << r.err;
}

TEST_F(CliTest, HelpListsExitCodesAndExamples) {
    auto r = run({"req", "--help"});
    EXPECT_EQ(r.code, 0);
    for (const char* s : {"no_responders", "timeout", "service_lost", "Examples"})
        EXPECT_NE(r.out.find(s), std::string::npos) << s;
}

// --- req and serve -----------------------------------------------------------------------------

TEST_F(CliTest, ReqDecodesATypedReplyBusWasNotBuiltWith) {
    auto service = publisher({"serve", "svc.reading"});
    ASSERT_TRUE(served("svc.reading"));
    auto r = run({"req", "svc.reading", "attic"});
    ASSERT_EQ(r.code, 0) << r.err;
    const auto reply = json::parse(lines_of(r.out).at(0));
    EXPECT_EQ(reply["sensor"], "attic");
    EXPECT_EQ(reply["seq"], 7);

    auto j = run({"req", "--json", "svc.reading", "cellar"});
    ASSERT_EQ(j.code, 0) << j.err;
    const auto whole = json::parse(lines_of(j.out).at(0));
    EXPECT_EQ(whole["type"], "testonly.v1.Reading");
    EXPECT_EQ(whole["payload"]["sensor"], "cellar");
}

TEST_F(CliTest, ReqFailuresHaveDistinctExitCodes) {
    auto none = run({"req", "nobody.home", "x"});
    EXPECT_EQ(none.code, 4) << none.err;
    EXPECT_NE(none.err.find("no_responders"), std::string::npos) << none.err;

    auto mute = publisher({"mute", "svc.mute"});
    ASSERT_TRUE(served("svc.mute"));
    auto slow = run({"req", "--timeout", "200ms", "svc.mute", "x"});
    EXPECT_EQ(slow.code, 5) << slow.err;
    EXPECT_NE(slow.err.find("timeout"), std::string::npos) << slow.err;

    // Over unix:// busd sees the instance die at once.
    auto dying = publisher({"die", "svc.die"}, true);
    ASSERT_TRUE(served("svc.die"));
    auto lost = run({"req", "--timeout", "60s", "svc.die", "x"});
    EXPECT_EQ(lost.code, 6) << lost.err;
    EXPECT_NE(lost.err.find("service_lost"), std::string::npos) << lost.err;

    auto failing = start({"serve", "--fail", "out_of_cheese", "svc.fail"});
    ASSERT_TRUE(served("svc.fail"));
    auto failed = run({"req", "svc.fail", "x"});
    EXPECT_EQ(failed.code, 7) << failed.err;
    EXPECT_NE(failed.err.find("out_of_cheese"), std::string::npos) << failed.err;
    // The service's detail (Responder::fail's second argument) is shown too.
    EXPECT_NE(failed.err.find("bus serve --fail"), std::string::npos) << failed.err;
}

TEST_F(CliTest, ServeEchoesOrAnswersAFixedTypedReply) {
    auto echo = start({"serve", "-n", "1", "svc.echo"});
    ASSERT_TRUE(served("svc.echo"));
    auto r = run({"req", "svc.echo", "ping 1"});
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(r.out, "ping 1\n");
    ASSERT_TRUE(echo->wait());
    EXPECT_EQ(echo->code(), 0) << echo->err();
    EXPECT_NE(echo->out().find("svc.echo"), std::string::npos) << echo->out();

    register_reading_type();
    auto fixed = start({"serve", "--type", "testonly.v1.Reading", "--reply",
                        R"({"sensor": "fixed"})", "svc.fixed"});
    ASSERT_TRUE(served("svc.fixed"));
    auto f = run({"req", "--json", "svc.fixed"});
    ASSERT_EQ(f.code, 0) << f.err;
    const auto j = json::parse(lines_of(f.out).at(0));
    EXPECT_EQ(j["type"], "testonly.v1.Reading");
    EXPECT_EQ(j["payload"]["sensor"], "fixed");
}

// --- ls, status, types ---------------------------------------------------------------------------

TEST_F(CliTest, LsListsClientsServicesSubscriptionsAndTypes) {
    register_reading_type();
    auto sub = start({"sub", "watched.>"});
    ASSERT_TRUE(subscribed("watched.>"));
    auto service = start({"serve", "listed.service"});
    ASSERT_TRUE(served("listed.service"));

    auto types = run({"ls", "types"});
    ASSERT_EQ(types.code, 0) << types.err;
    EXPECT_NE(types.out.find("testonly.v1.Reading"), std::string::npos) << types.out;
    EXPECT_EQ(lines_of(types.out).at(0).rfind("TYPE\t", 0), 0u) << "a header, tab-separated";

    auto services = run({"ls", "services"});
    EXPECT_NE(services.out.find("listed.service"), std::string::npos) << services.out;
    auto subs = run({"ls", "subscriptions"});
    EXPECT_NE(subs.out.find("watched.>"), std::string::npos) << subs.out;

    auto clients = run({"ls", "--json", "clients"});
    ASSERT_EQ(clients.code, 0) << clients.err;
    std::set<std::string> names;
    for (const auto& line : lines_of(clients.out)) {
        ASSERT_TRUE(json::accept(line)) << line;
        names.insert(json::parse(line)["name"].get<std::string>());
    }
    EXPECT_TRUE(names.count("bus-sub")) << clients.out;
    EXPECT_TRUE(names.count("bus-serve")) << clients.out;
    EXPECT_TRUE(names.count("bus-ls")) << clients.out;

    // busd counts what it delivers: this one reaches the `bus sub` above.
    ASSERT_EQ(run({"pub", "watched.counted", "x"}).code, 0);
    auto subjects = run({"ls", "--json", "subjects"});
    bool found = false;
    for (const auto& line : lines_of(subjects.out))
        found |= json::parse(line)["subject"] == "watched.counted";
    EXPECT_TRUE(found) << subjects.out;
}

// Shared-memory queues: `bus ls queues` shows what clients announced to busd (figures from the
// segment); `bus shm ls` reads every queue on the host without busd, and `bus shm rm --stale`
// removes those whose creator died and that nobody holds.
TEST_F(CliTest, QueuesAreListedThroughBusdAndOnTheHostAndStaleOnesRemoved) {
    const std::string live = "cli-test-live-" + std::to_string(::getpid());
    const std::string dead = "cli-test-dead-" + std::to_string(::getpid());
    struct Unlink {
        std::vector<std::string> names;
        ~Unlink() {
            for (const auto& n : names)
                bus::shm::remove(n, true);
        }
    } unlink{{live, dead}};
    auto queue = bus::shm::Queue::create(live, 4096);
    ASSERT_TRUE(queue) << queue.error().message();
    bus::v1::Heartbeat record;
    record.set_seq(1);
    ASSERT_FALSE(queue.value().try_push(record));
    ASSERT_FALSE(queue.value().try_push(record));
    // A creator that dies without removing its queue leaves it stale.
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        auto q = bus::shm::Queue::create(dead, 4096);
        ::_exit(q ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    client().announce_queue(live);
    ASSERT_TRUE(
        run_until(io_, [&] { return ask<bus::v1::QueueList>("$sys.queues").queues_size() == 1; }));
    auto through_busd = run({"ls", "--json", "queues"});
    ASSERT_EQ(through_busd.code, 0) << through_busd.err;
    const auto announced = lines_of(through_busd.out);
    ASSERT_EQ(announced.size(), 1u) << through_busd.out;
    const auto q = json::parse(announced[0]);
    EXPECT_EQ(q["name"], live);
    EXPECT_EQ(q["client_id"], client().id());
    EXPECT_EQ(q["depth_records"], "2") << q.dump(); // protobuf's JSON: 64-bit as strings
    auto table = run({"ls", "queues"});
    EXPECT_EQ(lines_of(table.out).at(0).rfind("QUEUE\t", 0), 0u) << table.out;

    auto host = run({"shm", "ls", "--json"});
    ASSERT_EQ(host.code, 0) << host.err;
    std::map<std::string, json> seen;
    for (const auto& line : lines_of(host.out)) {
        ASSERT_TRUE(json::accept(line)) << line;
        auto j = json::parse(line);
        seen[j["name"].get<std::string>()] = j;
    }
    ASSERT_TRUE(seen.count(live) && seen.count(dead)) << host.out;
    EXPECT_EQ(seen[live]["depth_records"], 2);
    EXPECT_EQ(seen[live]["stale"], false);
    EXPECT_EQ(seen[dead]["stale"], true);
    EXPECT_EQ(seen[dead]["owner_alive"], false);

    auto bad = run({"shm", "rm"});
    EXPECT_EQ(bad.code, 2) << "rm needs a name or --stale";
    auto held = run({"shm", "rm", live});
    EXPECT_NE(held.code, 0) << "a queue a live process holds stays";
    EXPECT_NE(held.err.find("--force"), std::string::npos) << held.err;
    // Which queue, and who holds it (this test process does).
    EXPECT_NE(held.err.find("queue '" + live + "'"), std::string::npos) << held.err;
    EXPECT_NE(held.err.find("pid " + std::to_string(::getpid())), std::string::npos) << held.err;
    auto removed = run({"shm", "rm", "--stale"});
    ASSERT_EQ(removed.code, 0) << removed.err;
    auto after = run({"shm", "ls", "--json"});
    EXPECT_EQ(after.out.find("\"" + dead + "\""), std::string::npos) << after.out;
    EXPECT_NE(after.out.find("\"" + live + "\""), std::string::npos) << after.out;
}

TEST_F(CliTest, StatusNamesTheBrokerAndFailsWithTheEndpointWhenNoneAnswers) {
    auto up = run({"status"});
    ASSERT_EQ(up.code, 0) << up.err;
    EXPECT_NE(up.out.find("busd"), std::string::npos) << up.out;
    EXPECT_NE(up.out.find(busd_->ipc()), std::string::npos) << up.out;
    auto j = run({"status", "--json"});
    ASSERT_EQ(j.code, 0);
    const auto s = json::parse(lines_of(j.out).at(0));
    EXPECT_EQ(s["endpoint"], busd_->ipc());
    EXPECT_FALSE(s["broker_id"].get<std::string>().empty());

    const std::string endpoint = busd_->ipc();
    busd_->stop();
    auto down = run({"status"});
    EXPECT_EQ(down.code, 3) << down.err;
    EXPECT_NE(down.err.find(endpoint), std::string::npos) << down.err;
    EXPECT_NE(down.err.find("busd"), std::string::npos) << down.err;
}

TEST_F(CliTest, StatusWaitsOnlyAsLongAsAskedForABrokerThatDoesNotAnswer) {
    // A socket file nobody serves (a busd killed hard leaves one): no answer, exit 3.
    const std::string endpoint = busd_->ipc();
    busd_->kill();
    ASSERT_TRUE(std::filesystem::exists(endpoint.substr(6)));
    auto r = run({"--connect-timeout", "0.3", "status"});
    EXPECT_EQ(r.code, 3) << r.err;
    EXPECT_NE(r.err.find("no broker answered at " + endpoint), std::string::npos) << r.err;
}

TEST_F(CliTest, TypesShowPrintsTheSchemaAsProtoText) {
    register_reading_type();
    auto r = run({"types", "show", "testonly.v1.Reading"});
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("message Reading {"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("string sensor = 1;"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(".testonly.v1.Place place = 4;"), std::string::npos) << r.out;
    auto file = run({"types", "show", "--file", "testonly.v1.Reading"});
    EXPECT_NE(file.out.find("message Place {"), std::string::npos) << file.out;
}

// --- top ---------------------------------------------------------------------------------------

TEST_F(CliTest, TopInATerminalRefreshesInPlaceShowingSubjectsAndClients) {
    auto sub = start({"sub", "top.>"});
    ASSERT_TRUE(subscribed("top.>"));
    publish_readings("top.readings", 3); // delivered to the sub, so busd counts the subject
    PtyCommand top({bus_bin, "-e", busd_->ipc(), "top", "--interval", "100ms"});
    const std::string clear = "\x1b[H\x1b[2J";
    // Three refreshes: the screen between the second and the third is a whole one.
    ASSERT_TRUE(top.read_until([&](const std::string& out) { return count_of(out, clear) >= 3; }))
        << top.output();
    const auto& out = top.output();
    const auto second = out.find(clear, out.find(clear) + 1) + clear.size();
    const std::string screen = out.substr(second, out.find(clear, second) - second);
    EXPECT_NE(screen.find("\x1b[1m"), std::string::npos) << "a bold header on a terminal";
    EXPECT_NE(screen.find("SUBJECT"), std::string::npos) << screen;
    EXPECT_NE(screen.find("bus-sub"), std::string::npos) << screen;
    std::string row;
    std::istringstream lines(screen);
    for (std::string line; std::getline(lines, line);)
        if (line.find("top.readings") != std::string::npos)
            row = line;
    ASSERT_FALSE(row.empty()) << screen;
    std::istringstream cells(row);
    std::vector<std::string> cell;
    for (std::string c; cells >> c;)
        cell.push_back(c);
    // SUBJECT MSGS/S BYTES/S (a number and a unit) DROPS/S MSGS DROPPED
    ASSERT_EQ(cell.size(), 7u) << row;
    EXPECT_EQ(cell[5], "3") << row;
    EXPECT_EQ(cell[6], "0") << row;
    EXPECT_EQ(top.stop(SIGINT), 0) << "Ctrl-C ends it cleanly";
}

// `bus top` in a terminal run from a shell, which reports its exit code and then the
// terminal's mode (`stty -a`): what a person sees after it ended.
std::vector<std::string> top_in_shell(const std::string& endpoint) {
    return {"/bin/sh", "-c",
            "ulimit -c 0; \"$0\" -e \"$1\" top --interval 100ms; echo \"top exited $?\"; "
            "stty -a",
            bus_bin, endpoint};
}

// The screen last drawn (everything after the last clear).
std::string last_screen(const std::string& out) {
    const std::string clear = "\x1b[H\x1b[2J";
    const auto at = out.rfind(clear);
    return at == std::string::npos ? std::string() : out.substr(at + clear.size());
}

bool has(const std::string& text, const std::string& what) {
    return text.find(what) != std::string::npos;
}

// After the shell's `stty -a`: the terminal is back in canonical mode with echo.
void expect_terminal_restored(const std::string& out) {
    const auto stty = out.substr(out.find("top exited"));
    EXPECT_TRUE(has(stty, " icanon")) << stty;
    EXPECT_FALSE(has(stty, "-icanon")) << stty;
    EXPECT_TRUE(has(stty, " echo ")) << stty;
    EXPECT_FALSE(has(stty, "-echo ")) << stty;
}

TEST_F(CliTest, TopKeysSortPauseShowHelpAndQuitLeavingTheTerminalAsItWas) {
    auto sub = start({"sub", "top.>"});
    ASSERT_TRUE(subscribed("top.>"));
    publish_readings("top.b", 3); // more messages and bytes than top.a
    publish_readings("top.a", 1);
    PtyCommand top(top_in_shell(busd_->ipc()));
    const std::string clear = "\x1b[H\x1b[2J";
    auto screen_with = [&](const std::vector<std::string>& all) {
        return top.read_until([&](const std::string& out) {
            const auto screen = last_screen(out);
            return std::all_of(all.begin(), all.end(), [&](auto& w) { return has(screen, w); });
        });
    };
    // Sorted by msgs/s first: equal rates, so the larger total (top.b) leads.
    ASSERT_TRUE(screen_with({"sort msgs/s", "(? for keys)", "top.a", "top.b"})) << top.output();
    auto screen = last_screen(top.output());
    EXPECT_LT(screen.find("top.b"), screen.find("top.a")) << screen;
    // Keys come one at a time and are not echoed; Ctrl-C still interrupts.
    EXPECT_EQ(top.local_modes() & (ICANON | ECHO), 0u);
    EXPECT_NE(top.local_modes() & ISIG, 0u);

    top.type("s");
    ASSERT_TRUE(screen_with({"sort bytes/s"})) << top.output();
    top.type("s");
    ASSERT_TRUE(screen_with({"sort drops"})) << top.output();
    top.type("s");
    ASSERT_TRUE(screen_with({"sort name", "top.a", "top.b"})) << top.output();
    screen = last_screen(top.output());
    EXPECT_LT(screen.find("top.a"), screen.find("top.b")) << "by name: " << screen;
    top.type("s");
    ASSERT_TRUE(screen_with({"sort msgs/s"})) << "s comes back round: " << top.output();

    // p: the screen stays as it is (no redraw for six intervals), then refreshes again.
    top.type("p");
    ASSERT_TRUE(screen_with({"[paused]", "DROPPED"})) << top.output();
    const auto paused_at = count_of(top.output(), clear);
    top.read_for(600ms);
    EXPECT_EQ(count_of(top.output(), clear), paused_at) << "refreshed while paused";
    top.type("p");
    ASSERT_TRUE(top.read_until([&](const std::string& out) {
        return count_of(out, clear) >= paused_at + 3;
    })) << top.output();
    EXPECT_FALSE(has(last_screen(top.output()), "[paused]"));

    top.type("?");
    ASSERT_TRUE(screen_with({"keys: q quit"})) << top.output();
    EXPECT_FALSE(has(last_screen(top.output()), "(? for keys)"));

    top.type("q");
    ASSERT_TRUE(top.read_until([](const std::string& out) {
        return has(out, "top exited") && has(out.substr(out.find("top exited")), "icanon");
    })) << top.output();
    EXPECT_TRUE(has(top.output(), "top exited 0\r\n")) << top.output();
    expect_terminal_restored(top.output());
    EXPECT_EQ(top.stop(0), 0);
}

// Ended by a signal instead of q, top still puts the terminal back: SIGTERM ends it cleanly,
// SIGHUP and SIGQUIT kill it (their default action) after the mode is restored.
TEST_F(CliTest, TopRestoresTheTerminalWhenASignalEndsIt) {
    for (const auto& [sig, status] : std::vector<std::pair<int, int>>{
             {SIGTERM, 0}, {SIGHUP, 128 + SIGHUP}, {SIGQUIT, 128 + SIGQUIT}}) {
        SCOPED_TRACE(::strsignal(sig));
        PtyCommand top(top_in_shell(busd_->ipc()));
        ASSERT_TRUE(top.read_until([](const std::string& out) { return has(out, "CLIENT"); }))
            << top.output();
        // top is the shell's only child.
        std::ifstream children("/proc/" + std::to_string(top.pid()) + "/task/" +
                               std::to_string(top.pid()) + "/children");
        pid_t pid = 0;
        ASSERT_TRUE(children >> pid);
        ASSERT_EQ(::kill(pid, sig), 0);
        ASSERT_TRUE(top.read_until([](const std::string& out) {
            return has(out, "top exited") && has(out.substr(out.find("top exited")), "icanon");
        })) << top.output();
        EXPECT_TRUE(has(top.output(), "top exited " + std::to_string(status) + "\r\n"))
            << top.output();
        expect_terminal_restored(top.output());
        EXPECT_EQ(top.stop(0), 0);
    }
}

TEST_F(CliTest, TopPipedPrintsSnapshotsAndJson) {
    auto sub = start({"sub", "top.>"});
    ASSERT_TRUE(subscribed("top.>"));
    publish_readings("top.piped", 2);
    // stdin is not a terminal: its "q" is not read as a key.
    auto plain = run({"top", "-n", "2", "--interval", "50ms"}, "q");
    ASSERT_EQ(plain.code, 0) << plain.err;
    EXPECT_EQ(plain.out.find('\x1b'), std::string::npos) << "no escapes when piped";
    EXPECT_EQ(count_of(plain.out, "SUBJECT\t"), 2u) << plain.out;
    EXPECT_EQ(count_of(plain.out, "sort msgs/s"), 2u) << plain.out;
    EXPECT_EQ(plain.out.find("? for keys"), std::string::npos) << "no keys without a terminal";
    auto j = run({"top", "--json", "-n", "2", "--interval", "50ms"});
    ASSERT_EQ(j.code, 0) << j.err;
    const auto lines = lines_of(j.out);
    ASSERT_EQ(lines.size(), 2u) << j.out;
    bool found = false;
    const auto snapshot = json::parse(lines[1]);
    for (const auto& s : snapshot["subjects"])
        found |= s["subject"] == "top.piped" && s["msgs"] == 2;
    EXPECT_TRUE(found) << lines[1];
}

// --- bench -------------------------------------------------------------------------------------

TEST_F(CliTest, BenchSubMeasuresWhatBenchPubSends) {
    auto sub = start({"bench", "sub", "--json", "-n", "500", "bench.x"});
    ASSERT_TRUE(subscribed("bench.x"));
    auto pub = run({"bench", "pub", "--json", "-n", "500", "-s", "100", "bench.x"});
    ASSERT_EQ(pub.code, 0) << pub.err;
    EXPECT_EQ(json::parse(lines_of(pub.out).at(0))["count"], 500);
    ASSERT_TRUE(sub->wait());
    ASSERT_EQ(sub->code(), 0) << sub->err();
    const auto r = json::parse(lines_of(sub->out()).at(0));
    EXPECT_EQ(r["bench"], "sub");
    EXPECT_EQ(r["count"], 500);
    EXPECT_EQ(r["size"], 100);
    const auto& l = r["latency_us"];
    EXPECT_GT(l["p50"].get<double>(), 0);
    EXPECT_LE(l["p50"].get<double>(), l["p99"].get<double>());
    EXPECT_LE(l["p99"].get<double>(), l["max"].get<double>());
}

TEST_F(CliTest, BenchReqPrintsRoundTripPercentiles) {
    auto r = run({"bench", "req", "--serve", "-n", "200", "bench.echo"});
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("req: 200 messages"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("p99"), std::string::npos) << r.out;
    auto none = run({"bench", "req", "-n", "1", "nobody.serves"});
    EXPECT_EQ(none.code, 4) << none.err;
}

// --- completion ----------------------------------------------------------------------------------

TEST_F(CliTest, BashCompletionOffersCommandsOptionsAndWhatBusdKnows) {
    register_reading_type();
    auto service = start({"serve", "completed.service"});
    ASSERT_TRUE(served("completed.service"));
    // Completes the words given after the script, as bash would at the end of that line.
    const std::string script = "source \"$0\"\n"
                               "COMP_WORDS=(\"$@\"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _bus\n"
                               "printf '%s\\n' \"${COMPREPLY[@]}\"\n";
    auto complete = [&](std::vector<std::string> words) {
        std::vector<std::string> argv = {"bash",  "-c", script,      BUS_COMPLETION,
                                         bus_bin, "-e", busd_->ipc()};
        argv.insert(argv.end(), words.begin(), words.end());
        Command c(io_, argv);
        EXPECT_TRUE(c.wait());
        EXPECT_EQ(c.code(), 0) << c.err();
        return lines_of(c.out());
    };
    using Lines = std::vector<std::string>;
    EXPECT_EQ(complete({"mo"}), Lines{"monitor"});
    EXPECT_EQ(complete({"ls", "su"}), (Lines{"subjects", "subscriptions"}));
    EXPECT_EQ(complete({"sub", "--hea"}), Lines{"--headers"});
    EXPECT_EQ(complete({"req", "completed."}), Lines{"completed.service"});
    EXPECT_EQ(complete({"pub", "--type", "testonly."}), Lines{"testonly.v1.Reading"});
    EXPECT_EQ(complete({"types", "show", "testonly"}), Lines{"testonly.v1.Reading"});
}

// What a real interactive zsh offers for `bus -e ENDPOINT LINE<TAB>` (complete.zsh), sorted.
std::vector<std::string> zsh_complete(boost::asio::io_context& io, const std::string& endpoint,
                                      const std::string& line) {
    Command c(io,
              {"zsh", ZSH_COMPLETE, BUS_COMPLETION_DIR, bus_bin + " -e " + endpoint + " " + line});
    EXPECT_TRUE(c.wait());
    EXPECT_EQ(c.code(), 0) << c.err();
    auto offered = lines_of(c.out());
    std::sort(offered.begin(), offered.end());
    return offered;
}

TEST_F(CliTest, ZshCompletionOffersCommandsOptionsAndWhatBusdKnows) {
    register_reading_type();
    auto service = start({"serve", "completed.service"});
    ASSERT_TRUE(served("completed.service"));
    auto complete = [&](const std::string& line) { return zsh_complete(io_, busd_->ipc(), line); };
    using Lines = std::vector<std::string>;
    EXPECT_EQ(complete(""), (Lines{"bench", "cluster", "ls", "monitor", "pub", "req", "serve",
                                   "shm", "status", "sub", "top", "types"}));
    EXPECT_EQ(complete("mo"), Lines{"monitor"});
    EXPECT_EQ(complete("req "), Lines{"completed.service"});
    EXPECT_EQ(complete("req completed.service "), Lines{}) << "the body is free text";
    EXPECT_EQ(complete("ls su"), (Lines{"subjects", "subscriptions"}));
    EXPECT_EQ(complete("sub --hea"), Lines{"--headers"});
    EXPECT_EQ(complete("top --"), (Lines{"--count", "--interval", "--rows"}));
    EXPECT_EQ(complete("pub --type testonly."), Lines{"testonly.v1.Reading"});
    EXPECT_EQ(complete("types show testonly"), Lines{"testonly.v1.Reading"});
    EXPECT_EQ(complete("cluster "),
              (Lines{"delete", "logs", "ls", "reload", "restart", "scale", "start", "stop"}));
    EXPECT_EQ(complete("cluster logs --"), (Lines{"--follow", "--lines", "--timeout"}));
    EXPECT_EQ(complete("cluster start --mo"), Lines{"--mode"});
}

// After `bus cluster logs|scale|...`, the apps busd runs (the first table of `bus cluster ls`).
TEST(CliZsh, CompletionOffersTheAppsOfBusdsCluster) {
    boost::asio::io_context io;
    const TempDir dir;
    std::ofstream((dir / "busd.toml")) << "[[app]]\nname = \"hello\"\ncommand = \"" << BUS_BIN_DIR
                                       << "/bus-http-hello\"\nlisten = [\"tcp://127.0.0.1:0\"]\n"
                                       << "[[app]]\nname = \"help\"\ncommand = \"" << BUS_BIN_DIR
                                       << "/bus-http-hello\"\nlisten = [\"tcp://127.0.0.1:0\"]\n";
    Busd busd(io, {"-c", (dir / "busd.toml"), "--apps-log-dir", (dir / "logs")});
    auto complete = [&](const std::string& line) { return zsh_complete(io, busd.ipc(), line); };
    using Lines = std::vector<std::string>;
    EXPECT_EQ(complete("cluster logs "), (Lines{"hello", "help"}));
    EXPECT_EQ(complete("cluster scale hel"), (Lines{"hello", "help"}));
    EXPECT_EQ(complete("cluster delete hell"), Lines{"hello"});
}

// --- monitor -------------------------------------------------------------------------------------

TEST_F(CliTest, MonitorShowsPublishesRequestsAndRepliesDecoded) {
    auto monitor = start({"monitor", "--json", "-n", "4", "mon.>"});
    ASSERT_TRUE(monitoring("mon.>"));
    publish_readings("mon.readings", 2);
    auto service = publisher({"serve", "mon.svc"});
    ASSERT_TRUE(served("mon.svc"));
    auto r = run({"req", "mon.svc", "porch"});
    ASSERT_EQ(r.code, 0) << r.err;
    ASSERT_TRUE(monitor->wait());
    ASSERT_EQ(monitor->code(), 0) << monitor->err();
    const auto lines = lines_of(monitor->out());
    ASSERT_EQ(lines.size(), 4u) << monitor->out();
    std::vector<json> j;
    for (const auto& line : lines)
        j.push_back(json::parse(line));
    EXPECT_EQ(j[0]["kind"], "publish");
    EXPECT_EQ(j[0]["subject"], "mon.readings");
    EXPECT_EQ(j[0]["payload"]["seq"], 1);
    EXPECT_EQ(j[1]["payload"]["seq"], 2);
    EXPECT_EQ(j[2]["kind"], "request");
    EXPECT_EQ(j[2]["subject"], "mon.svc");
    EXPECT_EQ(j[2]["payload_text"], "porch");
    EXPECT_EQ(j[3]["kind"], "reply");
    EXPECT_EQ(j[3]["type"], "testonly.v1.Reading");
    EXPECT_EQ(j[3]["payload"]["sensor"], "porch");
    // Who sent what: the request came from `bus req`, the reply from the service.
    EXPECT_NE(j[2]["source"], j[3]["source"]);
}

TEST_F(CliTest, MonitorPcapHoldsEachMessageAsAnEnvelope) {
    const TempDir dir;
    const std::string file = (dir / "capture.pcap");
    auto monitor = start({"monitor", "--pcap", file, "-n", "2", "cap.>"});
    ASSERT_TRUE(monitoring("cap.>"));
    ASSERT_EQ(run({"pub", "-H", "k=v", "cap.one", "first"}).code, 0);
    ASSERT_EQ(run({"pub", "cap.two", "second"}).code, 0);
    ASSERT_TRUE(monitor->wait());
    ASSERT_EQ(monitor->code(), 0) << monitor->err();
    const std::string pcap = slurp(file);
    auto u32 = [&](std::size_t at) {
        std::uint32_t v = 0;
        std::memcpy(&v, pcap.data() + at, 4);
        return v;
    };
    ASSERT_GE(pcap.size(), 24u);
    EXPECT_EQ(u32(0), 0xa1b2c3d4u);
    EXPECT_EQ(u32(20), 147u) << "LINKTYPE_USER0";
    std::vector<bus::v1::Envelope> packets;
    for (std::size_t at = 24; at + 16 <= pcap.size();) {
        const auto kept = u32(at + 8);
        EXPECT_EQ(kept, u32(at + 12));
        ASSERT_LE(at + 16 + kept, pcap.size());
        bus::v1::Envelope e;
        EXPECT_TRUE(e.ParseFromArray(pcap.data() + at + 16, static_cast<int>(kept)));
        packets.push_back(e);
        at += 16 + kept;
    }
    ASSERT_EQ(packets.size(), 2u);
    EXPECT_EQ(packets[0].kind(), bus::v1::KIND_PUBLISH);
    EXPECT_EQ(packets[0].subject(), "cap.one");
    EXPECT_EQ(packets[0].payload(), "first");
    ASSERT_EQ(packets[0].headers_size(), 1);
    EXPECT_EQ(packets[0].headers(0).value(), "v");
    EXPECT_EQ(packets[1].payload(), "second");
    EXPECT_EQ(packets[1].subscription_id(), 0u);
}

// The Wireshark dissector (clients/bus/wireshark/bus.lua) in the real tshark, reading what a
// real `bus monitor --pcap` wrote: each packet's Envelope fields as the monitor's JSON shows them.
TEST_F(CliTest, WiresharkDissectorDecodesAMonitorPcap) {
    const TempDir dir;
    const std::string file = (dir / "capture.pcap");
    auto monitor = start({"monitor", "--json", "--pcap", file, "-n", "5", "cap.>"});
    ASSERT_TRUE(monitoring("cap.>"));
    ASSERT_EQ(run({"pub", "-H", "k=v", "-H", "trace=abc", "cap.one", "first"}).code, 0);
    publish_readings("cap.readings", 1);
    auto service = start({"serve", "--quiet", "cap.svc"});
    ASSERT_TRUE(served("cap.svc"));
    ASSERT_EQ(run({"req", "cap.svc", "ping"}).code, 0); // a request and its reply
    const std::string big(300000, 'x');                 // over the 256 KiB snap length
    ASSERT_EQ(run({"pub", "cap.big"}, big).code, 0);
    ASSERT_TRUE(monitor->wait());
    ASSERT_EQ(monitor->code(), 0) << monitor->err();
    std::vector<json> shown;
    for (const auto& line : lines_of(monitor->out()))
        shown.push_back(json::parse(line));
    ASSERT_EQ(shown.size(), 5u) << monitor->out();

    const std::vector<std::string> columns = {
        "bus.kind",       "bus.subject",       "bus.source",       "bus.type", "bus.payload_length",
        "bus.header.key", "bus.header.value",  "bus.payload_text", "bus.id",   "bus.correlation_id",
        "frame.cap_len",  "_ws.expert.message"};
    std::vector<std::string> argv = {
        "tshark",      "-X",           std::string("lua_script:") + BUS_WIRESHARK_LUA,
        "-r",          file,           "-T",
        "fields",      "-E",           "separator=|",
        "-E",          "occurrence=a", "-E",
        "aggregator=,"};
    for (const auto& c : columns)
        argv.insert(argv.end(), {"-e", c});
    Command tshark(io_, argv);
    ASSERT_TRUE(tshark.wait());
    ASSERT_EQ(tshark.code(), 0) << tshark.err();
    EXPECT_EQ(tshark.err().find("Lua"), std::string::npos) << tshark.err();
    std::vector<std::map<std::string, std::string>> packets;
    for (const auto& line : lines_of(tshark.out())) {
        std::map<std::string, std::string> p;
        std::istringstream cells(line);
        std::string cell;
        for (const auto& c : columns) {
            std::getline(cells, cell, '|');
            p[c] = cell;
        }
        packets.push_back(p);
    }
    ASSERT_EQ(packets.size(), 5u) << tshark.out();
    const std::map<std::string, std::string> kinds = {
        {"publish", "2"}, {"request", "3"}, {"reply", "4"}, {"error", "6"}};
    for (std::size_t i = 0; i < packets.size(); ++i) {
        SCOPED_TRACE("packet " + std::to_string(i + 1));
        auto& p = packets[i];
        EXPECT_EQ(p["bus.kind"], kinds.at(shown[i]["kind"].get<std::string>()));
        EXPECT_EQ(p["bus.source"], shown[i]["source"]);
        EXPECT_EQ(p["bus.subject"], shown[i].value("subject", ""));
        EXPECT_EQ(p["bus.type"], shown[i].value("type", ""));
    }
    EXPECT_EQ(packets[0]["bus.subject"], "cap.one");
    EXPECT_EQ(packets[0]["bus.payload_length"], "5");
    EXPECT_EQ(packets[0]["bus.payload_text"], "first");
    EXPECT_EQ(packets[0]["bus.header.key"], "k,trace");
    EXPECT_EQ(packets[0]["bus.header.value"], "v,abc");
    EXPECT_EQ(packets[1]["bus.subject"], "cap.readings");
    EXPECT_EQ(packets[1]["bus.type"], "testonly.v1.Reading");
    EXPECT_NE(packets[1]["bus.payload_length"], "0");
    EXPECT_EQ(packets[2]["bus.kind"], "3");
    EXPECT_EQ(packets[2]["bus.subject"], "cap.svc");
    EXPECT_EQ(packets[2]["bus.payload_text"], "ping");
    EXPECT_EQ(packets[3]["bus.kind"], "4");
    EXPECT_EQ(packets[3]["bus.payload_text"], "ping") << "the echo";
    EXPECT_NE(packets[3]["bus.correlation_id"], "");
    EXPECT_NE(packets[3]["bus.correlation_id"], "0");
    EXPECT_EQ(packets[4]["bus.subject"], "cap.big");
    EXPECT_EQ(packets[4]["bus.payload_length"], "300000") << "the length as sent";
    EXPECT_EQ(packets[4]["frame.cap_len"], "262144");
    EXPECT_FALSE(packets[4]["bus.source"].empty()) << "the source is before the cut payload";
    EXPECT_NE(packets[4]["_ws.expert.message"].find("snap length"), std::string::npos)
        << packets[4]["_ws.expert.message"];
    for (std::size_t i = 0; i < 4; ++i)
        EXPECT_EQ(packets[i]["_ws.expert.message"], "") << "packet " << i + 1;
}

TEST_F(CliTest, MonitorPatternLeavesOtherSubjectsOut) {
    auto monitor = start({"monitor", "--json", "-n", "1", "wanted.*"});
    ASSERT_TRUE(monitoring("wanted.*"));
    ASSERT_EQ(run({"pub", "unwanted.x", "no"}).code, 0);
    ASSERT_EQ(run({"pub", "wanted.x", "yes"}).code, 0);
    ASSERT_TRUE(monitor->wait());
    const auto lines = lines_of(monitor->out());
    ASSERT_EQ(lines.size(), 1u) << monitor->out();
    EXPECT_EQ(json::parse(lines[0])["payload_text"], "yes");
}

// Against a busd on tcp:// with CURVE: with the server's public key (BUS_SERVER_KEY) bus works
// as over a local endpoint; without it, it says what is missing and exits with the no-broker code.
TEST(CliTcp, WorksAgainstARemoteBusdWithItsCurveKey) {
    boost::asio::io_context io;
    TempDir keys;
    Command generate(io, {bus::test::busd_path(), "--generate-keys", (keys / "k")});
    ASSERT_TRUE(generate.wait());
    std::string key = generate.out();
    while (!key.empty() && (key.back() == '\n' || key.back() == ' '))
        key.pop_back();
    ASSERT_EQ(key.size(), 40u) << generate.out() << generate.err();
    const bus::test::ReservedPort port;
    const std::string tcp = port.tcp();
    Busd busd(io, {"--listen", tcp, "--curve-keys", (keys / "k")});
    auto bus_over_tcp = [&](std::vector<std::string> args) {
        std::vector<std::string> argv = {"env", "BUS_SERVER_KEY=" + key, bus_bin, "-e", tcp};
        argv.insert(argv.end(), args.begin(), args.end());
        return std::make_unique<Command>(io, argv);
    };

    auto status = bus_over_tcp({"status"});
    ASSERT_TRUE(status->wait());
    EXPECT_EQ(status->code(), 0) << status->err();
    EXPECT_NE(status->out().find(tcp), std::string::npos) << status->out();

    auto server = bus_over_tcp({"serve", "tcp.echo"});
    ASSERT_TRUE(run_until(
        io,
        [&] {
            auto ls = bus_over_tcp({"ls", "services"});
            return ls->wait() && ls->out().find("tcp.echo") != std::string::npos;
        },
        20s));
    auto call = bus_over_tcp({"req", "tcp.echo", "over curve"});
    ASSERT_TRUE(call->wait());
    EXPECT_EQ(call->code(), 0) << call->err();
    EXPECT_NE(call->out().find("over curve"), std::string::npos) << call->out();
}

TEST(CliTcp, WithoutTheServersKeyBusSaysWhatIsMissing) {
    boost::asio::io_context io;
    const bus::test::ReservedPort port; // nobody listens on it: bus must not get that far
    const std::string tcp = port.tcp();
    Command keyless(io, {"env", "-u", "BUS_SERVER_KEY", bus_bin, "-e", tcp, "status"});
    ASSERT_TRUE(keyless.wait());
    EXPECT_EQ(keyless.code(), 3) << keyless.err();
    EXPECT_NE(keyless.err().find("BUS_SERVER_KEY"), std::string::npos) << keyless.err();
}

// Another uid may connect ([access] allow_uids) but monitor only when monitor_uids names it.
// Runs as root (CI), or, for anyone else, as root of a user namespace with subordinate ids
// (other_uid.hpp); skipped, saying why, only where neither is possible.
TEST(CliMonitorAccess, OtherUidsMonitorOnlyWhenTheConfigNamesThem) {
    if (::geteuid() != 0) {
        if (const auto why = bus::test::rerun_in_user_namespace(); !why.empty())
            GTEST_SKIP() << why;
        return;
    }
    constexpr int nobody = bus::test::nobody;
    for (const bool named : {false, true}) {
        boost::asio::io_context io;
        const TempDir conf_dir;
        const std::string conf = (conf_dir / "busd.toml");
        std::ofstream(conf) << "[access]\nallow_uids = [" << nobody << "]\n"
                            << (named ? "monitor_uids = [65534]\n" : "");
        {
            Busd busd(io, {"-c", conf});
            // Let the other uid reach the socket (busd makes it private to its own).
            std::filesystem::permissions(busd.dir(), std::filesystem::perms::owner_all |
                                                         std::filesystem::perms::others_exec);
            std::filesystem::permissions(
                busd.dir() + "/busd.zmq",
                std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
                    std::filesystem::perms::others_read | std::filesystem::perms::others_write);
            // `bus monitor` as nobody, its output in files of ours.
            const bus::UniqueFd out(
                ::open((conf_dir / "out").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
            const bus::UniqueFd err(
                ::open((conf_dir / "err").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
            bus::test::AsUser monitor(
                nobody, nobody,
                bus::test::run_program(
                    {bus_bin, "-e", busd.ipc(), "monitor", "-n", "1", "--timeout", "60s", "acc.>"},
                    out.get(), err.get()));
            if (named) {
                // Registered: then a publish reaches it and it exits 0 after one message.
                auto c = bus::Client::connect(io, busd.ipc()).value();
                ASSERT_TRUE(run_until(io, [&] {
                    std::optional<bool> found;
                    c->request_bytes(
                        "$sys.subscriptions", {}, 5s, [&](std::error_code ec, bus::Message& m) {
                            bus::v1::SubscriptionList list;
                            found = !ec && list.ParseFromString(std::string(m.payload())) &&
                                    list.subscriptions_size() > 0 &&
                                    list.subscriptions(0).monitor();
                        });
                    run_until(io, [&] { return found.has_value(); });
                    return found.value_or(false);
                })) << slurp((conf_dir / "err"));
                c->publish_bytes("acc.x", "seen");
                ASSERT_FALSE(c->flush_wait());
                const auto code = monitor.wait();
                ASSERT_TRUE(code) << "bus monitor still runs after 60 s";
                EXPECT_EQ(*code, 0) << slurp((conf_dir / "err"));
                EXPECT_NE(slurp((conf_dir / "out")).find("acc.x"), std::string::npos)
                    << slurp((conf_dir / "out"));
            } else {
                const auto code = monitor.wait();
                ASSERT_TRUE(code) << "bus monitor still runs after 60 s";
                EXPECT_EQ(*code, 8) << slurp((conf_dir / "err"));
                EXPECT_NE(slurp((conf_dir / "err")).find("monitor_uids"), std::string::npos)
                    << slurp((conf_dir / "err"));
            }
        }
    }
}

TEST(CliMonitorAccess, BusdRefusesABadMonitorUidsNamingTheKey) {
    boost::asio::io_context io;
    const TempDir dir;
    std::ofstream((dir / "busd.toml")) << "[access]\nmonitor_uids = [\"root\"]\n";
    Command busd(
        io, {bus::test::busd_path(), "-c", (dir / "busd.toml"), "-e", "unix://" + (dir / "s")});
    ASSERT_TRUE(busd.wait());
    EXPECT_EQ(busd.code(), 2);
    EXPECT_NE(busd.err().find("access.monitor_uids"), std::string::npos) << busd.err();
}

} // namespace
