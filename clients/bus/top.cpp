// bus top: a live view of message rates and drops per subject and per client, refreshed in
// place on a terminal (one snapshot after another when piped; one JSON object each with --json).
#include "common.hpp"

#include <bus/v1/broker.pb.h>

#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <cmath>
#include <map>

namespace bus::cli {
namespace {

struct TopOptions {
    std::string interval = "1s";
    std::uint64_t count = 0;
    std::size_t rows = 20;
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

void render(const Sample& now, const Sample* before, const TopOptions& o, const Global& g,
            const Style& style, bool terminal) {
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
    std::stable_sort(subjects.begin(), subjects.end(), [](const auto& a, const auto& b) {
        return a.msgs != b.msgs ? a.msgs > b.msgs : a.s->msgs() > b.s->msgs();
    });
    struct ClientRow {
        const v1::ClientInfo* c;
        double in, out, drops;
    };
    std::vector<ClientRow> clients;
    for (const auto& c : now.clients.clients()) {
        const auto* old = old_clients.count(c.id()) ? old_clients[c.id()] : nullptr;
        clients.push_back({&c, old ? per_second(c.msgs_in(), old->msgs_in(), dt) : 0,
                           old ? per_second(c.msgs_out(), old->msgs_out(), dt) : 0,
                           old ? per_second(c.dropped(), old->dropped(), dt) : 0});
    }
    std::stable_sort(clients.begin(), clients.end(),
                     [](const auto& a, const auto& b) { return a.in + a.out > b.in + b.out; });
    const double routed =
        before ? per_second(now.stats.msgs_routed(), before->stats.msgs_routed(), dt) : 0;

    if (g.json) {
        nlohmann::ordered_json j;
        j["time"] = iso_time(std::chrono::system_clock::now());
        j["routed_per_s"] = routed;
        j["dropped"] = now.stats.dropped();
        j["clients"] = now.stats.clients();
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
            "  dropped " + std::to_string(now.stats.dropped()) + "\n\n";
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
    Table ct({"CLIENT", "NAME", "PID", "IN/S", "OUT/S", "DROPS/S", "QUEUED", "DROPPED"});
    for (std::size_t i = 0; i < clients.size() && i < o.rows; ++i) {
        const auto& r = clients[i];
        ct.add({r.c->id(), r.c->name(), std::to_string(r.c->pid()), rate_text(r.in),
                rate_text(r.out), rate_text(r.drops), std::to_string(r.c->queued()),
                r.c->dropped() ? style.red(std::to_string(r.c->dropped())) : "0"});
    }
    ct.print(stdout, style);
    if (!terminal)
        std::fputc('\n', stdout); // snapshots apart when piped
    std::fflush(stdout);
}

int run_top(const TopOptions& o, const Global& g) {
    const auto interval = parse_duration(o.interval, "--interval");
    if (interval.count() < 50)
        throw Failure(exit_code::usage, "--interval: at least 50ms");
    boost::asio::io_context io;
    const auto signals = watch_signals(io);
    auto client = connect(io, g, "top");
    const bool terminal = ::isatty(STDOUT_FILENO) != 0;
    const Style style{g.color()};

    std::optional<Sample> previous;
    std::uint64_t shown = 0;
    boost::asio::steady_timer timer(io);
    while (!interrupted()) {
        Sample now;
        std::optional<std::error_code> result;
        auto ask = [&](const char* what, google::protobuf::Message& into) {
            result.reset();
            client->request_bytes(what, {}, std::chrono::seconds(5),
                                  [&](std::error_code ec, Message& m) {
                                      result = ec;
                                      if (!ec)
                                          into.ParseFromString(std::string(m.payload()));
                                  });
            run_until_done(io, [&] { return result.has_value(); });
            if (result && *result)
                throw Failure(exit_code_for(*result), "busd at " + g.endpoint + " did not answer " +
                                                          what + ": " + result->message());
        };
        ask("$sys.stats", now.stats);
        if (interrupted())
            break;
        ask("$sys.clients", now.clients);
        if (interrupted())
            break;
        now.at = std::chrono::steady_clock::now();
        render(now, previous ? &*previous : nullptr, o, g, style, terminal);
        previous = std::move(now);
        if (o.count && ++shown >= o.count)
            break;
        bool fired = false;
        timer.expires_after(interval);
        timer.async_wait([&](const boost::system::error_code&) { fired = true; });
        run_until_done(io, [&] { return fired; });
    }
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
                "Examples:\n"
                "  bus top\n"
                "  bus top --json --interval 5s | jq '.subjects[0]'");
    cmd->callback([o, &g, &run] { run = [o, &g] { return run_top(*o, g); }; });
}

} // namespace bus::cli
