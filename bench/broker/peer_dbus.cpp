// D-Bus: dbus-daemon (the reference bus) and dbus-broker, each run privately on a unix socket in
// the case's directory with a generated session-bus configuration (the policy and limits of
// Debian's session.conf: everything allowed, 1 GB queues). Clients use sd-bus (libsystemd).
//
// dbus-broker has no standalone mode. It runs as
//   systemd-socket-activate -l SOCK -E DBUS_SESSION_BUS_ADDRESS=unix:path=SOCK
//     dbus-broker-launch --scope user --config-file CONF
// which listens on SOCK, and on the first connection execs the launcher (same pid); the
// launcher forks dbus-broker itself, whose memory the stall case watches. The launcher logs to
// /run/systemd/journal/socket and will not start without one: the janitor provides it if the
// machine has none.
//
// pub/sub: signals (path /bench, interface org.bench.Bench, member Data, one "ay" argument: the
//   payload), broadcast; subscribers add a match rule (sd_bus_match_signal returns once the bus
//   has it). The publisher sends with sd_bus_send(); once more than `queue_limit` messages wait
//   in sd-bus's write queue it waits for the socket (that wait is its "blocked send").
// request/reply: method calls org.bench.Echo.Echo(ay) -> ay to the well-known name
//   org.bench.Echo, sd_bus_call_async() with 1 or 64 in flight.
#include "peers.hpp"

#include <systemd/sd-bus.h>

#include <poll.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace bench::broker {
namespace {

constexpr const char* path = "/bench";
constexpr const char* signal_interface = "org.bench.Bench";
constexpr const char* service = "org.bench.Echo";
constexpr std::uint64_t queue_limit = 256;

void check(int r, const char* what) {
    if (r < 0)
        throw std::runtime_error(std::string(what) + ": " + std::strerror(-r));
}

struct Bus {
    sd_bus* bus = nullptr;
    explicit Bus(const std::string& address) {
        check(sd_bus_new(&bus), "sd_bus_new");
        check(sd_bus_set_address(bus, address.c_str()), "sd_bus_set_address");
        check(sd_bus_set_bus_client(bus, 1), "sd_bus_set_bus_client");
        check(sd_bus_start(bus), "connect to the bus");
    }
    ~Bus() { sd_bus_close_unref(bus); }
    Bus(const Bus&) = delete;
    Bus& operator=(const Bus&) = delete;

    std::uint64_t queued() const {
        std::uint64_t q = 0;
        sd_bus_get_n_queued_write(bus, &q);
        return q;
    }
    // Processes everything pending without waiting.
    void process_all() {
        int r;
        while ((r = sd_bus_process(bus, nullptr)) > 0) {
        }
        check(r, "sd_bus_process");
    }
    // Waits (up to `ms`, -1: the bus's own timeout or forever) for the bus or `other_fd`;
    // true if other_fd is readable.
    bool wait(int ms, int other_fd = -1) {
        const int events = sd_bus_get_events(bus);
        check(events, "sd_bus_get_events");
        std::uint64_t until = 0;
        sd_bus_get_timeout(bus, &until);
        if (until != UINT64_MAX) {
            timespec ts{};
            clock_gettime(CLOCK_MONOTONIC, &ts);
            const std::uint64_t now_us = static_cast<std::uint64_t>(ts.tv_sec) * 1000000 +
                                         static_cast<std::uint64_t>(ts.tv_nsec) / 1000;
            const int bus_ms = until > now_us ? static_cast<int>((until - now_us + 999) / 1000) : 0;
            ms = ms < 0 ? bus_ms : std::min(ms, bus_ms);
        }
        pollfd p[2] = {{sd_bus_get_fd(bus), static_cast<short>(events), 0}, {other_fd, POLLIN, 0}};
        ::poll(p, other_fd >= 0 ? 2 : 1, ms);
        return other_fd >= 0 && p[1].revents;
    }
    // Writes until at most `limit` messages wait, or the deadline; false at the deadline.
    bool drain_to(std::uint64_t limit, double deadline) {
        while (queued() > limit) {
            const double left = deadline - now_s();
            if (left <= 0)
                return false;
            pollfd p{sd_bus_get_fd(bus), POLLOUT, 0};
            ::poll(&p, 1, static_cast<int>(std::ceil(left * 1000)));
            process_all();
        }
        return true;
    }
};

std::string config(const std::string& socket) {
    return R"(<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=)" +
           socket + R"(</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  <limit name="max_incoming_bytes">1000000000</limit>
  <limit name="max_outgoing_bytes">1000000000</limit>
  <limit name="max_message_size">1000000000</limit>
  <limit name="max_completed_connections">100000</limit>
  <limit name="max_connections_per_user">100000</limit>
  <limit name="max_match_rules_per_connection">50000</limit>
  <limit name="max_replies_per_connection">50000</limit>
</busconfig>
)";
}

// The requester's state, for sd-bus's C callbacks.
struct Requests {
    sd_bus* bus;
    std::string payload;
    RoundTrips trips;
    // Replies come in order (one responder, one connection): each answers the oldest call.
    std::uint64_t next_reply = 0;
    std::string failure;
};

int on_reply(sd_bus_message* m, void* userdata, sd_bus_error*);

void issue(Requests& rq) {
    sd_bus_message* m = nullptr;
    check(sd_bus_message_new_method_call(rq.bus, &m, service, path, service, "Echo"), "call");
    check(sd_bus_message_append_array(m, 'y', rq.payload.data(), rq.payload.size()), "append");
    const auto r = sd_bus_call_async(rq.bus, nullptr, m, on_reply, &rq, 5'000'000);
    sd_bus_message_unref(m);
    check(r, "sd_bus_call_async");
    rq.trips.sent();
}

int on_reply(sd_bus_message* m, void* userdata, sd_bus_error*) {
    auto& rq = *static_cast<Requests*>(userdata);
    const void* data = nullptr;
    std::size_t size = 0;
    if (sd_bus_message_is_method_error(m, nullptr)) {
        rq.failure = sd_bus_message_get_error(m)->message ? sd_bus_message_get_error(m)->message
                                                          : "method error";
        return 0;
    }
    if (sd_bus_message_read_array(m, 'y', &data, &size) < 0 || size != rq.payload.size()) {
        rq.failure = "malformed reply";
        return 0;
    }
    if (rq.trips.answered(rq.next_reply++)) {
        try {
            issue(rq);
        } catch (const std::exception& e) {
            rq.failure = e.what();
        }
    }
    return 0;
}

int on_data(sd_bus_message* m, void* userdata, sd_bus_error*) {
    const void* data = nullptr;
    std::size_t size = 0;
    if (sd_bus_message_read_array(m, 'y', &data, &size) < 0)
        size = SIZE_MAX;
    static_cast<SubscriberCounter*>(userdata)->on_message(size);
    return 0;
}

int on_echo(sd_bus_message* m, void*, sd_bus_error*) {
    const void* data = nullptr;
    std::size_t size = 0;
    int r = sd_bus_message_read_array(m, 'y', &data, &size);
    if (r < 0)
        return r;
    sd_bus_message* reply = nullptr;
    if ((r = sd_bus_message_new_method_return(m, &reply)) < 0)
        return r;
    r = sd_bus_message_append_array(reply, 'y', data, size);
    if (r >= 0)
        r = sd_bus_send(nullptr, reply, nullptr);
    sd_bus_message_unref(reply);
    return r < 0 ? r : 1;
}

const sd_bus_vtable echo_vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD("Echo", "ay", "ay", on_echo, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_VTABLE_END,
};

class DbusPeer final : public Peer {
public:
    DbusPeer(const Paths& paths, std::string which) : paths_(paths), which_(std::move(which)) {}

    std::string name() const override { return which_; }

    void start(Pattern, const std::string& dir) override {
        const std::string socket = dir + "/dbus.sock", conf = dir + "/bus.conf";
        address_ = "unix:path=" + socket;
        write_file(conf, config(socket));
        if (which_ == "dbus-daemon") {
            server_ = Server::spawn({paths_.dbus_daemon, "--nofork", "--nopidfile", "--nosyslog",
                                     "--config-file=" + conf},
                                    dir + "/dbus.log");
            wait_for_unix(socket, 10, &server_);
            broker_ = server_.pid();
            return;
        }
        janitor::ensure_journal_socket();
        server_ = Server::spawn({paths_.socket_activate, "-l", socket, "-E",
                                 "DBUS_SESSION_BUS_ADDRESS=" + address_, paths_.dbus_launch,
                                 "--scope", "user", "--config-file", conf},
                                dir + "/dbus.log");
        wait_for_unix(socket, 10, &server_); // this first connection starts the launcher
        broker_ = 0;
        for (const double deadline = now_s() + 10; broker_ == 0; ::usleep(2000)) {
            if (const auto children = children_of(server_.pid()); !children.empty())
                broker_ = children.front();
            else if (!server_.running() || now_s() > deadline)
                throw std::runtime_error("dbus-broker did not start: " + server_.log_tail());
        }
    }
    void stop() override { server_.stop(); }
    pid_t broker_pid() const override { return broker_; }

    void subscriber(const SubSpec& spec, RoleIo& io) override {
        Bus bus(address_);
        SubscriberCounter counter(spec.size);
        sd_bus_slot* slot = nullptr;
        check(sd_bus_match_signal(bus.bus, &slot, nullptr, path, signal_interface, "Data", on_data,
                                  &counter),
              "AddMatch");
        io.ready();
        if (spec.stalled) {
            io.wait_control();
            io.result(to_json(counter.result()));
            return;
        }
        for (;;) {
            int r;
            while ((r = sd_bus_process(bus.bus, nullptr)) > 0) {
            }
            if (r == -ECONNRESET || r == -ENOTCONN || r == -EPIPE) { // cut off by the broker
                counter.result().disconnected = true;
                break;
            }
            check(r, "sd_bus_process");
            if (counter.finished())
                break;
            if (bus.wait(counter.poll_ms(), io.control_fd()) &&
                !io.read_control([&](auto& l) { counter.on_control(l); }))
                throw std::runtime_error("the bench went away");
        }
        sd_bus_slot_unref(slot);
        io.result(to_json(counter.result()));
    }

    void publisher(const PubSpec& spec, RoleIo& io) override {
        Bus bus(address_);
        const std::string payload = make_payload(spec.size);
        PubResult r;
        Pacer pacer(spec.rate);
        SendTimer timer;
        r.start = now_s();
        pacer.start(r.start);
        const double deadline = r.start + spec.seconds;
        std::uint64_t queued = 0;
        bool all_written = true;
        for (double now = r.start; now < deadline; now = now_s()) {
            const std::uint64_t n = pacer.allowance(now, queued, 64);
            auto send = [&] {
                sd_bus_message* m = nullptr;
                check(sd_bus_message_new_signal(bus.bus, &m, path, signal_interface, "Data"),
                      "new signal");
                check(sd_bus_message_append_array(m, 'y', payload.data(), payload.size()),
                      "append");
                const int sent = sd_bus_send(bus.bus, m, nullptr);
                sd_bus_message_unref(m);
                check(sent, "sd_bus_send");
                return 0;
            };
            if (spec.time_sends)
                timer.begin();
            for (std::uint64_t i = 0; i < n; ++i)
                spec.time_sends ? timer.time(send) : send();
            queued += n;
            if (bus.queued() > queue_limit) {
                // The send that found the queue full waits this long.
                auto drain = [&] { return bus.drain_to(queue_limit / 2, deadline); };
                const double t0 = now_s();
                all_written = spec.time_sends ? timer.time(drain) : drain();
                r.max_wait_ms = std::max(r.max_wait_ms, (now_s() - t0) * 1000);
                if (!all_written)
                    break;
            }
            r.end = now_s();
        }
        if (all_written)
            all_written = bus.drain_to(0, deadline + (spec.time_sends ? 0 : 10));
        r.sent = queued - bus.queued();
        r.max_send_ms = timer.max_call_ms;
        r.max_blocked_ms = timer.max_blocked_ms;
        io.result(to_json(r));
        io.wait_control(); // until the subscribers are done: nothing is torn down under them
    }

    void responder(RoleIo& io) override {
        Bus bus(address_);
        check(sd_bus_add_object_vtable(bus.bus, nullptr, path, service, echo_vtable, nullptr),
              "add vtable");
        check(sd_bus_request_name(bus.bus, service, 0), "RequestName");
        io.ready();
        for (;;) {
            bus.process_all();
            if (bus.wait(-1, io.control_fd()) && !io.read_control([](auto&) {}))
                return;
        }
    }

    void requester(const ReqSpec& spec, RoleIo& io) override {
        Bus bus(address_);
        Requests rq{bus.bus, make_payload(spec.size), RoundTrips(spec), 0, {}};
        for (int i = 0; i < spec.in_flight; ++i)
            issue(rq);
        while (rq.trips.outstanding() > 0 && rq.failure.empty()) {
            bus.process_all();
            if (rq.trips.outstanding() > 0)
                bus.wait(5000);
        }
        if (!rq.failure.empty())
            throw std::runtime_error(rq.failure);
        io.result(to_json(rq.trips.result()));
    }

private:
    Paths paths_;
    std::string which_;
    std::string address_;
    Server server_;
    pid_t broker_ = 0;
};

} // namespace

std::unique_ptr<Peer> make_dbus_peer(const Paths& paths, const std::string& which) {
    return std::make_unique<DbusPeer>(paths, which);
}

} // namespace bench::broker
