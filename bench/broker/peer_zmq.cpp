// ZeroMQ with no broker ("zmq direct") and through a zmq_proxy in a process of its own
// ("zmq_proxy": a broker that routes nothing). Everything over ipc:// in the case's directory.
//
// pub/sub, one subscriber, direct: DEALER -> DEALER (the subscriber binds), blocking sends:
//   the fastest lossless link ZeroMQ has.
// pub/sub with a proxy, or with several subscribers: XPUB -> [XSUB | zmq_proxy | XPUB] -> SUB
//   (direct: XPUB -> SUB). Each message is one frame, "D" + payload, and every XPUB has
//   ZMQ_XPUB_NODROP, so a full queue blocks the sender instead of dropping: lossless, like the
//   DEALER link. Each subscriber also subscribes to a topic of its own, "R<index>", that
//   nothing is published on: the publisher waits until it has seen all of those, and so knows
//   every subscriber's "D" is in place (a SUB sends its subscriptions in order).
// request/reply: DEALER requester -> DEALER responder (direct), or DEALER -> ROUTER |
//   zmq_proxy | DEALER -> DEALER; the responder echoes every frame it got.
#include "peers.hpp"

#include <zmq.hpp>

#include <cstring>
#include <stdexcept>
#include <unordered_set>

namespace bench::broker {
namespace {

constexpr int send_timeout_ms = 200; // a blocked send is retried, so the deadline is kept

class ZmqPeer final : public Peer {
public:
    explicit ZmqPeer(bool proxy) : proxy_(proxy) {}

    std::string name() const override { return proxy_ ? "zmq_proxy" : "zmq-direct"; }
    bool has_broker() const override { return proxy_; }

    void start(Pattern pattern, const std::string& dir) override {
        dir_ = dir;
        if (!proxy_)
            return;
        const std::string front = ipc(pattern == Pattern::pubsub ? "proxy-in" : "proxy-front");
        const std::string back = ipc(pattern == Pattern::pubsub ? "proxy-out" : "proxy-back");
        server_ = Server::fork(dir + "/proxy.log", [pattern, front, back] {
            zmq::context_t ctx(1);
            if (pattern == Pattern::pubsub) {
                zmq::socket_t in(ctx, zmq::socket_type::xsub), out(ctx, zmq::socket_type::xpub);
                out.set(zmq::sockopt::xpub_nodrop, 1);
                in.bind(front);
                out.bind(back);
                zmq::proxy(in, out);
            } else {
                zmq::socket_t in(ctx, zmq::socket_type::router), out(ctx, zmq::socket_type::dealer);
                in.bind(front);
                out.bind(back);
                zmq::proxy(in, out);
            }
        });
        wait_for_unix(front.substr(6), 10, &server_);
        wait_for_unix(back.substr(6), 10, &server_);
    }
    void stop() override { server_.stop(); }
    pid_t broker_pid() const override { return proxy_ ? server_.pid() : 0; }

    void subscriber(const SubSpec& spec, RoleIo& io) override {
        zmq::context_t ctx(1);
        const bool xpub = uses_xpub(spec.of);
        zmq::socket_t sock(ctx, xpub ? zmq::socket_type::sub : zmq::socket_type::dealer);
        sock.set(zmq::sockopt::linger, 0);
        if (xpub) {
            sock.set(zmq::sockopt::reconnect_ivl, 10);
            sock.set(zmq::sockopt::subscribe, "D");
            std::string mine = std::to_string(spec.index);
            mine.insert(mine.begin(), 'R'); // (not "R" + ...: g++ 12 -Wrestrict false positive)
            sock.set(zmq::sockopt::subscribe, mine);
            sock.connect(proxy_ ? ipc("proxy-out") : ipc("direct-pub"));
        } else {
            sock.bind(ipc("direct"));
        }
        io.ready();
        SubscriberCounter counter(spec.size);
        if (spec.stalled) {
            io.wait_control();
            io.result(to_json(counter.result()));
            return;
        }
        const std::size_t prefix = xpub ? 1 : 0;
        zmq::message_t msg;
        for (;;) {
            while (sock.recv(msg, zmq::recv_flags::dontwait))
                counter.on_message(msg.size() - prefix);
            if (counter.finished())
                break;
            zmq::pollitem_t items[] = {{sock.handle(), 0, ZMQ_POLLIN, 0},
                                       {nullptr, io.control_fd(), ZMQ_POLLIN, 0}};
            zmq::poll(items, 2, std::chrono::milliseconds(counter.poll_ms()));
            if (items[1].revents && !io.read_control([&](auto& l) { counter.on_control(l); }))
                throw std::runtime_error("the bench went away");
        }
        io.result(to_json(counter.result()));
    }

    void publisher(const PubSpec& spec, RoleIo& io) override {
        zmq::context_t ctx(1);
        const bool xpub = uses_xpub(spec.subscribers);
        zmq::socket_t sock(ctx, xpub ? zmq::socket_type::xpub : zmq::socket_type::dealer);
        sock.set(zmq::sockopt::sndtimeo, send_timeout_ms);
        // Deliver what is queued before exiting, except where a stalled peer would hold us.
        sock.set(zmq::sockopt::linger, spec.time_sends ? 0 : 10000);
        std::string message;
        if (xpub) {
            sock.set(zmq::sockopt::xpub_nodrop, 1);
            if (proxy_)
                sock.connect(ipc("proxy-in"));
            else
                sock.bind(ipc("direct-pub"));
            wait_for_subscribers(sock, spec.subscribers);
            message.push_back('D');
        } else {
            sock.connect(ipc("direct"));
        }
        message += make_payload(spec.size);

        PubResult r;
        Pacer pacer(spec.rate);
        SendTimer timer;
        r.start = now_s();
        pacer.start(r.start);
        const double deadline = r.start + spec.seconds;
        std::uint64_t sent = 0;
        for (double now = r.start; now < deadline; now = now_s()) {
            std::uint64_t n = pacer.allowance(now, sent, 64);
            if (n == 0)
                continue;
            // Retried past a timeout until the deadline: a slow peer shows as a long send.
            auto send = [&] {
                bool done = false;
                while (
                    !(done = sock.send(zmq::buffer(message), zmq::send_flags::none).has_value()) &&
                    now_s() < deadline) {
                }
                return done;
            };
            if (spec.time_sends)
                timer.begin();
            for (std::uint64_t i = 0; i < n; ++i) {
                if (!(spec.time_sends ? timer.time(send) : send()))
                    break;
                ++sent;
            }
            if (!spec.time_sends)
                r.max_wait_ms = std::max(r.max_wait_ms, (now_s() - now) * 1000);
            r.end = now_s();
        }
        if (spec.time_sends) {
            r.max_send_ms = timer.max_call_ms;
            r.max_blocked_ms = timer.max_blocked_ms;
            r.max_wait_ms = r.max_send_ms;
        }
        r.sent = sent;
        io.result(to_json(r));
        io.wait_control(); // until the subscribers are done: nothing is torn down under them
    }

    void responder(RoleIo& io) override {
        zmq::context_t ctx(1);
        zmq::socket_t sock(ctx, zmq::socket_type::dealer);
        sock.set(zmq::sockopt::linger, 0);
        if (proxy_)
            sock.connect(ipc("proxy-back"));
        else
            sock.bind(ipc("direct-rr"));
        io.ready();
        std::vector<zmq::message_t> parts;
        for (;;) {
            for (;;) {
                parts.clear();
                zmq::message_t part;
                if (!sock.recv(part, zmq::recv_flags::dontwait))
                    break;
                parts.push_back(std::move(part));
                while (parts.back().more()) {
                    zmq::message_t more;
                    (void)sock.recv(more);
                    parts.push_back(std::move(more));
                }
                for (std::size_t i = 0; i < parts.size(); ++i)
                    sock.send(parts[i], i + 1 < parts.size() ? zmq::send_flags::sndmore
                                                             : zmq::send_flags::none);
            }
            zmq::pollitem_t items[] = {{sock.handle(), 0, ZMQ_POLLIN, 0},
                                       {nullptr, io.control_fd(), ZMQ_POLLIN, 0}};
            zmq::poll(items, 2, std::chrono::milliseconds(-1));
            if (items[1].revents && !io.read_control([](auto&) {}))
                return;
        }
    }

    void requester(const ReqSpec& spec, RoleIo& io) override {
        zmq::context_t ctx(1);
        zmq::socket_t sock(ctx, zmq::socket_type::dealer);
        sock.set(zmq::sockopt::linger, 0);
        sock.set(zmq::sockopt::rcvtimeo, 5000);
        sock.connect(proxy_ ? ipc("proxy-front") : ipc("direct-rr"));
        std::string payload = make_payload(std::max<std::size_t>(spec.size, 8));
        RoundTrips trips(spec);
        auto issue = [&] {
            const std::uint64_t seq = trips.sent();
            std::memcpy(payload.data(), &seq, sizeof seq);
            sock.send(zmq::buffer(payload), zmq::send_flags::none);
        };
        for (int i = 0; i < spec.in_flight; ++i)
            issue();
        zmq::message_t reply;
        while (trips.outstanding() > 0) {
            if (!sock.recv(reply))
                throw std::runtime_error("no reply within 5 s");
            if (reply.size() != payload.size())
                throw std::runtime_error("malformed reply");
            std::uint64_t seq;
            std::memcpy(&seq, reply.data(), sizeof seq);
            if (trips.answered(seq))
                issue();
        }
        io.result(to_json(trips.result()));
    }

private:
    std::string ipc(const std::string& name) const { return "ipc://" + dir_ + "/" + name + ".ipc"; }
    bool uses_xpub(int subscribers) const { return proxy_ || subscribers > 1; }

    static void wait_for_subscribers(zmq::socket_t& sock, int subscribers) {
        std::unordered_set<std::string> seen;
        const double deadline = now_s() + 10;
        zmq::message_t msg;
        while (static_cast<int>(seen.size()) < subscribers) {
            zmq::pollitem_t item{sock.handle(), 0, ZMQ_POLLIN, 0};
            zmq::poll(&item, 1, std::chrono::milliseconds(50));
            while (sock.recv(msg, zmq::recv_flags::dontwait)) {
                const auto text = msg.to_string_view();
                if (text.size() > 1 && text[0] == 1 && text[1] == 'R')
                    seen.insert(std::string(text.substr(1)));
            }
            if (now_s() > deadline)
                throw std::runtime_error(
                    "subscribers did not arrive: " + std::to_string(seen.size()) + " of " +
                    std::to_string(subscribers));
        }
    }

    bool proxy_;
    std::string dir_;
    Server server_;
};

} // namespace

std::unique_ptr<Peer> make_zmq_direct_peer() {
    return std::make_unique<ZmqPeer>(false);
}
std::unique_ptr<Peer> make_zmq_proxy_peer() {
    return std::make_unique<ZmqPeer>(true);
}

} // namespace bench::broker
