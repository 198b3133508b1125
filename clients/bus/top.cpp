// bus top: a live view of message rates and drops per subject and per client, refreshed in
// place on a terminal (one snapshot after another when piped; one JSON object each with --json).
// With a terminal on stdin it reads keys: q quits, s changes the sort, p pauses, ? or h shows
// them.
#include "commands.hpp"
#include "connect.hpp"
#include "loop.hpp"
#include "output.hpp"

#include <bus/v1/broker.pb.h>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <map>

#include <termios.h>
#include <unistd.h>

namespace bus::cli {
namespace {

struct TopOptions {
    std::string interval = "1s";
    std::uint64_t count = 0;
    std::size_t rows = 20;
};

// What the rows are sorted by, in the order `s` steps through them.
enum class SortBy { msgs, bytes, drops, name };
constexpr std::array<const char*, 4> sort_names = {"msgs/s", "bytes/s", "drops", "name"};

const char* sort_name(SortBy by) {
    return sort_names[static_cast<std::size_t>(by)];
}

SortBy next_sort(SortBy by) {
    return static_cast<SortBy>((static_cast<std::size_t>(by) + 1) % sort_names.size());
}

// What the keys changed, and what render() shows of it.
struct View {
    SortBy sort = SortBy::msgs;
    bool paused = false;
    bool help = false;
    bool keys = false; // stdin is a terminal: keys are read
};

constexpr const char* keys_help = "keys: q quit  s sort (msgs/s, bytes/s, drops, name)  "
                                  "p pause/resume  ? or h this line";

// --- the terminal's mode -----------------------------------------------------------------------
//
// Keys are read one at a time without echo (non-canonical mode, ISIG kept so Ctrl-C still
// interrupts). The mode the terminal had is put back however top ends: returning or throwing
// (the destructor), SIGINT/SIGTERM (handled on the io_context, so top returns), a signal that
// ends it (SIGHUP, SIGQUIT, SIGABRT, a crash: restored in a handler, which then gives the
// signal to the action there was before, the default one or a sanitizer's), and Ctrl-Z
// (restored while stopped, raw again after).

termios g_saved_mode{};
termios g_raw_mode{};
volatile std::sig_atomic_t g_raw = 0;

constexpr std::array<int, 7> ending_signals = {SIGHUP, SIGQUIT, SIGABRT, SIGSEGV,
                                               SIGBUS, SIGFPE,  SIGILL};
std::array<struct sigaction, NSIG> g_previous{};

void restore_mode() {
    if (g_raw)
        ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &g_saved_mode);
    g_raw = 0;
}

void on_ending_signal(int sig) {
    restore_mode();
    ::sigaction(sig, &g_previous[static_cast<std::size_t>(sig)], nullptr);
    // A fault comes back when the instruction runs again, to the previous action; others are
    // sent again (delivered once this handler returns).
    if (sig != SIGSEGV && sig != SIGBUS && sig != SIGFPE && sig != SIGILL)
        ::raise(sig);
}

void on_stop(int) {
    const int saved_errno = errno;
    const bool was_raw = g_raw != 0;
    restore_mode();
    std::signal(SIGTSTP, SIG_DFL);
    sigset_t tstp;
    sigemptyset(&tstp);
    sigaddset(&tstp, SIGTSTP);
    ::sigprocmask(SIG_UNBLOCK, &tstp, nullptr); // blocked while its handler runs
    ::raise(SIGTSTP);                           // stops here; goes on below at SIGCONT
    std::signal(SIGTSTP, on_stop);
    if (was_raw && ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &g_raw_mode) == 0)
        g_raw = 1;
    errno = saved_errno;
}

class RawTerminal {
public:
    RawTerminal() {
        if (::tcgetattr(STDIN_FILENO, &g_saved_mode) != 0)
            return;
        g_raw_mode = g_saved_mode;
        g_raw_mode.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
        g_raw_mode.c_cc[VMIN] = 1;
        g_raw_mode.c_cc[VTIME] = 0;
        struct sigaction action {};
        action.sa_handler = on_ending_signal;
        sigemptyset(&action.sa_mask);
        for (const int sig : ending_signals)
            ::sigaction(sig, &action, &g_previous[static_cast<std::size_t>(sig)]);
        action.sa_handler = on_stop;
        action.sa_flags = SA_RESTART;
        ::sigaction(SIGTSTP, &action, &g_previous[SIGTSTP]);
        installed_ = true;
        g_raw = 1;
        if (::tcsetattr(STDIN_FILENO, TCSAFLUSH, &g_raw_mode) != 0)
            g_raw = 0;
    }
    ~RawTerminal() {
        restore_mode();
        if (!installed_)
            return;
        for (const int sig : ending_signals)
            ::sigaction(sig, &g_previous[static_cast<std::size_t>(sig)], nullptr);
        ::sigaction(SIGTSTP, &g_previous[SIGTSTP], nullptr);
    }
    RawTerminal(const RawTerminal&) = delete;
    RawTerminal& operator=(const RawTerminal&) = delete;

private:
    bool installed_ = false;
};

struct Sample {
    std::chrono::steady_clock::time_point at;
    v1::BrokerStats stats;
    v1::ClientList clients;
};

std::string rate_text(double r) {
    char buf[32];
    if (r >= 1e6)
        std::snprintf(buf, sizeof buf, "%.1fM", r / 1e6);
    else if (r >= 1e4)
        std::snprintf(buf, sizeof buf, "%.1fk", r / 1e3);
    else
        std::snprintf(buf, sizeof buf, "%.0f", r);
    return buf;
}

std::string bytes_text(double b) {
    char buf[32];
    if (b >= 1 << 20)
        std::snprintf(buf, sizeof buf, "%.1f MiB", b / (1 << 20));
    else if (b >= 1 << 10)
        std::snprintf(buf, sizeof buf, "%.1f KiB", b / (1 << 10));
    else
        std::snprintf(buf, sizeof buf, "%.0f B", b);
    return buf;
}

// Per-second change of a counter between two samples (0 for the first, or if it went back:
// busd restarted).
double per_second(std::uint64_t now, std::uint64_t before, double seconds) {
    if (seconds <= 0 || now < before)
        return 0;
    return static_cast<double>(now - before) / seconds;
}

void render(const Sample& now, const Sample* before, const TopOptions& o, const View& view,
            const Global& g, const Style& style, bool terminal) {
    const double dt = before ? std::chrono::duration<double>(now.at - before->at).count() : 0.0;
    std::map<std::string, const v1::SubjectStats*> old_subjects;
    std::map<std::string, const v1::ClientInfo*> old_clients;
    if (before) {
        for (const auto& s : before->stats.subjects())
            old_subjects[s.subject()] = &s;
        for (const auto& c : before->clients.clients())
            old_clients[c.id()] = &c;
    }
    struct SubjectRow {
        const v1::SubjectStats* s;
        double msgs, bytes, drops;
    };
    std::vector<SubjectRow> subjects;
    for (const auto& s : now.stats.subjects()) {
        const auto* old = old_subjects.count(s.subject()) ? old_subjects[s.subject()] : nullptr;
        subjects.push_back({&s, old ? per_second(s.msgs(), old->msgs(), dt) : 0,
                            old ? per_second(s.bytes(), old->bytes(), dt) : 0,
                            old ? per_second(s.dropped(), old->dropped(), dt) : 0});
    }
    // Highest first (ties: the larger total), except by name: A to Z.
    std::stable_sort(subjects.begin(), subjects.end(), [&](const auto& a, const auto& b) {
        switch (view.sort) {
        case SortBy::msgs:
            return a.msgs != b.msgs ? a.msgs > b.msgs : a.s->msgs() > b.s->msgs();
        case SortBy::bytes:
            return a.bytes != b.bytes ? a.bytes > b.bytes : a.s->bytes() > b.s->bytes();
        case SortBy::drops:
            return a.drops != b.drops ? a.drops > b.drops : a.s->dropped() > b.s->dropped();
        case SortBy::name:
            return a.s->subject() < b.s->subject();
        }
        return false;
    });
    struct ClientRow {
        const v1::ClientInfo* c;
        double in, out, bytes, drops;
    };
    std::vector<ClientRow> clients;
    for (const auto& c : now.clients.clients()) {
        const auto* old = old_clients.count(c.id()) ? old_clients[c.id()] : nullptr;
        clients.push_back(
            {&c, old ? per_second(c.msgs_in(), old->msgs_in(), dt) : 0,
             old ? per_second(c.msgs_out(), old->msgs_out(), dt) : 0,
             old ? per_second(c.bytes_in() + c.bytes_out(), old->bytes_in() + old->bytes_out(), dt)
                 : 0,
             old ? per_second(c.dropped(), old->dropped(), dt) : 0});
    }
    std::stable_sort(clients.begin(), clients.end(), [&](const auto& a, const auto& b) {
        switch (view.sort) {
        case SortBy::msgs:
            return a.in + a.out > b.in + b.out;
        case SortBy::bytes:
            return a.bytes > b.bytes;
        case SortBy::drops:
            return a.drops != b.drops ? a.drops > b.drops : a.c->dropped() > b.c->dropped();
        case SortBy::name:
            return a.c->name() != b.c->name() ? a.c->name() < b.c->name() : a.c->id() < b.c->id();
        }
        return false;
    });
    const double routed =
        before ? per_second(now.stats.msgs_routed(), before->stats.msgs_routed(), dt) : 0;

    if (g.json) {
        nlohmann::ordered_json j;
        j["time"] = iso_time(std::chrono::system_clock::now());
        j["routed_per_s"] = routed;
        j["dropped"] = now.stats.dropped();
        j["clients"] = now.stats.clients();
        j["sort"] = sort_name(view.sort);
        auto& js = j["subjects"] = nlohmann::ordered_json::array();
        for (const auto& r : subjects)
            js.push_back({{"subject", r.s->subject()},
                          {"msgs_per_s", r.msgs},
                          {"bytes_per_s", r.bytes},
                          {"dropped_per_s", r.drops},
                          {"msgs", r.s->msgs()},
                          {"dropped", r.s->dropped()}});
        auto& jc = j["client_rates"] = nlohmann::ordered_json::array();
        for (const auto& r : clients)
            jc.push_back({{"id", r.c->id()},
                          {"name", r.c->name()},
                          {"in_per_s", r.in},
                          {"out_per_s", r.out},
                          {"bytes_per_s", r.bytes},
                          {"dropped_per_s", r.drops},
                          {"queued", r.c->queued()}});
        std::printf("%s\n", j.dump().c_str());
        std::fflush(stdout);
        return;
    }
    std::string head;
    if (terminal)
        head += "\x1b[H\x1b[2J"; // home, clear: refresh in place
    head += style.bold("busd " + now.stats.version()) + "  " + g.endpoint + "  clients " +
            std::to_string(now.stats.clients()) + "  routed " + rate_text(routed) + "/s" +
            "  dropped " + std::to_string(now.stats.dropped()) + "  sort " + sort_name(view.sort) +
            (view.paused ? "  " + style.yellow("[paused]") : "") +
            (view.keys && !view.help ? "  (? for keys)" : "") + "\n";
    if (view.help)
        head += std::string(keys_help) + "\n";
    head += "\n";
    std::fputs(head.c_str(), stdout);
    Table st({"SUBJECT", "MSGS/S", "BYTES/S", "DROPS/S", "MSGS", "DROPPED"});
    for (std::size_t i = 0; i < subjects.size() && i < o.rows; ++i) {
        const auto& r = subjects[i];
        st.add({r.s->subject(), rate_text(r.msgs), bytes_text(r.bytes), rate_text(r.drops),
                std::to_string(r.s->msgs()),
                r.s->dropped() ? style.red(std::to_string(r.s->dropped())) : "0"});
    }
    st.print(stdout, style);
    std::fputc('\n', stdout);
    Table ct({"CLIENT", "NAME", "PID", "IN/S", "OUT/S", "BYTES/S", "DROPS/S", "QUEUED", "DROPPED"});
    for (std::size_t i = 0; i < clients.size() && i < o.rows; ++i) {
        const auto& r = clients[i];
        ct.add({r.c->id(), r.c->name(), std::to_string(r.c->pid()), rate_text(r.in),
                rate_text(r.out), bytes_text(r.bytes), rate_text(r.drops),
                std::to_string(r.c->queued()),
                r.c->dropped() ? style.red(std::to_string(r.c->dropped())) : "0"});
    }
    ct.print(stdout, style);
    if (!terminal)
        std::fputc('\n', stdout); // snapshots apart when piped
    std::fflush(stdout);
}

// Reads keys from a terminal on stdin, one at a time, as they come. Waits for readability
// only (reading itself is a plain read of what is there), so stdin's file description is never
// made non-blocking under the shell that shares it.
class Keys {
public:
    Keys(boost::asio::io_context& io, std::function<void(char)> on_key)
        : stdin_(io, STDIN_FILENO), on_key_(std::move(on_key)) {
        wait();
    }
    ~Keys() {
        boost::system::error_code ignored;
        stdin_.cancel(ignored);
        stdin_.release(); // stdin stays open
    }
    Keys(const Keys&) = delete;
    Keys& operator=(const Keys&) = delete;

private:
    void wait() {
        stdin_.async_wait(boost::asio::posix::descriptor_base::wait_read,
                          [this](const boost::system::error_code& ec) {
                              if (ec)
                                  return;
                              char buf[64];
                              const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
                              if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
                                  return; // the terminal went away: no more keys
                              for (ssize_t i = 0; i < n; ++i)
                                  on_key_(buf[i]);
                              wait();
                          });
    }
    boost::asio::posix::stream_descriptor stdin_;
    std::function<void(char)> on_key_;
};

int run_top(const TopOptions& o, const Global& g) {
    const auto interval = parse_duration(o.interval, "--interval");
    if (interval.count() < 50)
        throw Failure(exit_code::usage, "--interval: at least 50ms");
    boost::asio::io_context io;
    const auto signals = watch_signals(io);
    auto client = connect(io, g, "top");
    const bool terminal = ::isatty(STDOUT_FILENO) != 0;
    const Style style{g.color()};

    View view;
    view.keys = ::isatty(STDIN_FILENO) != 0;
    bool quit = false;
    bool redraw = false;
    std::optional<RawTerminal> raw;
    std::unique_ptr<Keys> keys;
    if (view.keys) {
        raw.emplace();
        keys = std::make_unique<Keys>(io, [&](char key) {
            switch (key) {
            case 'q':
            case 'Q':
                quit = true;
                break;
            case 's':
                view.sort = next_sort(view.sort);
                redraw = true;
                break;
            case 'p':
            case ' ':
                view.paused = !view.paused;
                redraw = true;
                break;
            case '?':
            case 'h':
                view.help = !view.help;
                redraw = true;
                break;
            default:
                break;
            }
        });
    }

    std::optional<Sample> previous, latest;
    std::uint64_t shown = 0;
    bool due = true; // time for the next sample (waited out while paused)
    boost::asio::steady_timer timer(io);
    auto show = [&] {
        render(*latest, previous ? &*previous : nullptr, o, view, g, style, terminal);
    };
    while (!interrupted() && !quit) {
        if (due && !view.paused) {
            Sample now;
            auto ask = [&](const std::string& what, google::protobuf::Message& into) {
                const auto reply = call(io, *client, what, "", std::chrono::seconds(5),
                                        [&](std::error_code ec, const Message&) {
                                            return "busd at " + g.endpoint + " did not answer " +
                                                   what + ": " + ec.message();
                                        });
                if (reply) // else Ctrl-C: the loop below ends
                    into.ParseFromString(std::string(reply->payload()));
            };
            ask("$sys.stats", now.stats);
            if (interrupted())
                break;
            ask("$sys.clients", now.clients);
            if (interrupted())
                break;
            now.at = std::chrono::steady_clock::now();
            previous = std::move(latest);
            latest = std::move(now);
            show();
            redraw = false;
            if (o.count && ++shown >= o.count)
                break;
            due = false;
            timer.expires_after(interval);
            timer.async_wait([&](const boost::system::error_code& ec) {
                if (!ec)
                    due = true;
            });
        }
        run_until_done(io, [&] { return (due && !view.paused) || redraw || quit; });
        if (redraw && latest && !quit) {
            show(); // a key changed the view: at once, from the samples there are
            redraw = false;
        }
    }
    timer.cancel();
    keys.reset();
    client->close();
    return exit_code::ok;
}

} // namespace

void add_top(CLI::App& app, Global& g, Runner& run) {
    auto o = std::make_shared<TopOptions>();
    auto* cmd = app.add_subcommand(
        "top", "A live view of message rates and drops per subject and per client");
    cmd->add_option("-i,--interval", o->interval, "refresh every (default 1s; 250ms, 2s)");
    cmd->add_option("-n,--count", o->count, "exit after N refreshes (default: until Ctrl-C)");
    cmd->add_option("--rows", o->rows, "at most this many subjects and clients (default 20)");
    cmd->footer("\nRefreshes in place on a terminal; piped, prints one snapshot after another;\n"
                "with --json, one object per refresh. Rates are the change since the last "
                "refresh\n(the first shows totals only). busd counts a subject when it delivers "
                "it.\n\n"
                "Keys (when stdin is a terminal): q quit, s sort by the next column (msgs/s,\n"
                "bytes/s, drops, name), p pause/resume the refresh, ? or h show the keys.\n\n"
                "Examples:\n"
                "  bus top\n"
                "  bus top --json --interval 5s | jq '.subjects[0]'");
    cmd->callback([o, &g, &run] { run = [o, &g] { return run_top(*o, g); }; });
}

} // namespace bus::cli
