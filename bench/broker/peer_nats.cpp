// nats-server (the Debian package), started privately on 127.0.0.1 with a free port and its
// defaults otherwise (64 MB max_pending per client, 10 s write deadline), with the small client
// of nats_client.hpp.
//
// Publisher: PUB commands appended to a buffer and written 64 KiB at a time, then PING/PONG at
//   the end (the server has processed everything). A write the socket does not take at once is
//   waited for with poll(): that wait is the publisher's "blocked send".
// Subscriber: SUB, then PING/PONG (the server has the subscription) before it says ready.
// Request/reply: the requester subscribes to _INBOX.<pid>.* and publishes each request with a
//   reply subject _INBOX.<pid>.<seq>; the responder publishes the payload back to it.
#include "nats_client.hpp"
#include "peers.hpp"

#include <poll.h>
#include <unistd.h>

#include <stdexcept>

namespace bench::broker {
namespace {

constexpr const char* subject = "bench.data";
constexpr const char* service = "bench.echo";
constexpr std::size_t write_batch = 64 * 1024;

class NatsPeer final : public Peer {
public:
    explicit NatsPeer(const Paths& paths) : paths_(paths) {}

    std::string name() const override { return "nats"; }

    void start(Pattern, const std::string& dir) override {
        port_ = free_tcp_port();
        server_ = Server::spawn({paths_.nats_server, "-a", "127.0.0.1", "-p", std::to_string(port_),
                                 "-n", "broker-bench"},
                                dir + "/nats.log");
        wait_for_tcp(port_, 10, &server_);
    }
    void stop() override { server_.stop(); }
    pid_t broker_pid() const override { return server_.pid(); }

    void subscriber(const SubSpec& spec, RoleIo& io) override {
        NatsConnection c;
        c.connect(port_, "bench-sub-" + std::to_string(spec.index));
        c.sub(subject, 1);
        c.ping_pong(5);
        io.ready();
        SubscriberCounter counter(spec.size);
        if (spec.stalled) {
            io.wait_control();
            io.result(to_json(counter.result()));
            return;
        }
        for (;;) {
            bool open = true;
            try {
                open = c.read_available(
                    [&](const NatsConnection::Msg& m) { counter.on_message(m.payload.size()); });
            } catch (const std::runtime_error&) { // -ERR 'Slow Consumer'
                open = false;
            }
            if (!open) { // cut off by the server
                counter.result().disconnected = true;
                break;
            }
            if (c.pending())
                c.flush(now_s() + 1);
            if (counter.finished())
                break;
            pollfd p[2] = {{c.fd(), POLLIN, 0}, {io.control_fd(), POLLIN, 0}};
            ::poll(p, 2, counter.poll_ms());
            if (p[1].revents && !io.read_control([&](auto& l) { counter.on_control(l); }))
                throw std::runtime_error("the bench went away");
        }
        io.result(to_json(counter.result()));
    }

    void publisher(const PubSpec& spec, RoleIo& io) override {
        NatsConnection c;
        c.connect(port_, "bench-pub");
        const std::string payload = make_payload(spec.size);
        const std::size_t wire = std::string("PUB ").size() + std::string(subject).size() + 1 +
                                 std::to_string(spec.size).size() + 2 + spec.size + 2;
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
            for (std::uint64_t i = 0; i < n; ++i)
                c.pub(subject, {}, payload);
            queued += n;
            if (c.pending() >= write_batch || (pacer.paced() && c.pending())) {
                double blocked = 0;
                timer.begin();
                all_written = timer.time([&] { return c.flush(deadline, &blocked); });
                r.max_wait_ms = std::max(r.max_wait_ms, blocked * 1000);
                if (!all_written)
                    break;
            }
            r.end = now_s();
        }
        if (all_written) {
            all_written = c.flush(deadline + 5);
            r.end = now_s();
        }
        // Whole messages the socket took.
        r.sent = queued - (c.pending() + wire - 1) / wire;
        if (spec.time_sends) {
            r.max_send_ms = timer.max_call_ms;
            r.max_blocked_ms = timer.max_blocked_ms;
        }
        // The server has processed every message. (A stalled server may never answer: the
        // stall case does not wait for it.)
        if (all_written) {
            try {
                c.ping_pong(spec.time_sends ? 2 : 10);
            } catch (const std::exception&) {
                if (!spec.time_sends)
                    throw;
            }
        }
        io.result(to_json(r));
        io.wait_control(); // until the subscribers are done: nothing is torn down under them
    }

    void responder(RoleIo& io) override {
        NatsConnection c;
        c.connect(port_, "bench-echo");
        c.sub(service, 1);
        c.ping_pong(5);
        io.ready();
        for (;;) {
            if (!c.read_available([&](const NatsConnection::Msg& m) {
                    if (!m.reply.empty())
                        c.pub(m.reply, {}, m.payload);
                }))
                throw std::runtime_error("nats-server closed the connection");
            c.flush(now_s() + 5);
            pollfd p[2] = {{c.fd(), POLLIN, 0}, {io.control_fd(), POLLIN, 0}};
            ::poll(p, 2, -1);
            if (p[1].revents && !io.read_control([](auto&) {}))
                return;
        }
    }

    void requester(const ReqSpec& spec, RoleIo& io) override {
        NatsConnection c;
        c.connect(port_, "bench-req");
        const std::string inbox = "_INBOX." + std::to_string(::getpid()) + ".";
        c.sub(inbox + "*", 1);
        c.ping_pong(5);
        const std::string payload = make_payload(spec.size);
        RoundTrips trips(spec);
        auto issue = [&] { c.pub(service, inbox + std::to_string(trips.sent()), payload); };
        for (int i = 0; i < spec.in_flight; ++i)
            issue();
        while (trips.outstanding() > 0) {
            if (!c.flush(now_s() + 5))
                throw std::runtime_error("nats-server does not read");
            pollfd p{c.fd(), POLLIN, 0};
            if (::poll(&p, 1, 5000) != 1)
                throw std::runtime_error("no reply within 5 s");
            const bool open = c.read_available([&](const NatsConnection::Msg& m) {
                if (!m.subject.starts_with(inbox) || m.payload.size() != spec.size)
                    throw std::runtime_error("unexpected reply");
                std::uint64_t seq = 0;
                for (char ch : m.subject.substr(inbox.size()))
                    seq = seq * 10 + static_cast<std::uint64_t>(ch - '0');
                if (trips.answered(seq))
                    issue();
            });
            if (!open)
                throw std::runtime_error("nats-server closed the connection");
        }
        io.result(to_json(trips.result()));
    }

private:
    Paths paths_;
    int port_ = 0;
    Server server_;
};

} // namespace

std::unique_ptr<Peer> make_nats_peer(const Paths& paths) {
    return std::make_unique<NatsPeer>(paths);
}

} // namespace bench::broker
