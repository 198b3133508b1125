// bus: the real busd (build-bench/bin/busd), serving ipc:// (ZeroMQ) and unix:// from one
// private directory; every role is a bus::Client on one of the two endpoints.
//
// Publisher: publish_bytes() in chunks of `chunk` messages, one chunk per loop turn, each chunk
// followed by a flush() (a ping the broker answers once it has processed everything before
// it). At most `windows` flushes are outstanding: that is the publisher's flow control, since
// publish() itself never blocks and never says "slow down" (over unix:// it would queue without
// bound in the client; over ipc:// it would refuse past the DEALER's SNDHWM). The longest wait
// for a window is reported as the publisher's "wait"; a single publish() call is timed in the
// stall case.
//
// Subscriber: subscribe() + flush(): once the flush completes the broker has the subscription.
// Responder: serve() + flush(). Requester: request_bytes() with a 5 s timeout.
#include "peers.hpp"

#include <bus/client.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <functional>
#include <stdexcept>
#include <system_error>

#include <unistd.h>

namespace bench::broker {
namespace {

namespace asio = boost::asio;

constexpr const char* subject = "bench.data";
constexpr const char* service = "bench.echo";
constexpr std::uint64_t chunk = 256;
constexpr int windows = 8;

// Calls `on_line` for each line the bench sends, and `on_close` when it closes the pipe.
class ControlWatch {
public:
    ControlWatch(asio::io_context& ctx, RoleIo& io, std::function<void(const std::string&)> on_line,
                 std::function<void()> on_close)
        : io_(io), fd_(ctx, ::dup(io.control_fd())), on_line_(std::move(on_line)),
          on_close_(std::move(on_close)) {
        arm();
    }

private:
    void arm() {
        fd_.async_wait(asio::posix::stream_descriptor::wait_read, [this](auto ec) {
            if (ec)
                return;
            if (!io_.read_control(on_line_))
                return on_close_();
            arm();
        });
    }
    RoleIo& io_;
    asio::posix::stream_descriptor fd_;
    std::function<void(const std::string&)> on_line_;
    std::function<void()> on_close_;
};

class BusPeer final : public Peer {
public:
    BusPeer(const Paths& paths, std::string transport, std::vector<std::string> busd_args)
        : paths_(paths), transport_(std::move(transport)), busd_args_(std::move(busd_args)) {}

    std::string name() const override { return "bus-" + transport_; }

    void start(Pattern, const std::string& dir) override {
        const std::string ipc = dir + "/busd.zmq", unix = dir + "/busd.sock";
        endpoint_ = transport_ == "ipc" ? "ipc://" + ipc : "unix://" + unix;
        std::vector<std::string> argv{paths_.busd, "-e", "ipc://" + ipc, "-e", "unix://" + unix};
        argv.insert(argv.end(), busd_args_.begin(), busd_args_.end());
        server_ = Server::spawn(argv, dir + "/busd.log");
        // busd binds both endpoints before it serves either.
        wait_for_unix(unix, 10, &server_);
    }
    void stop() override { server_.stop(); }
    pid_t broker_pid() const override { return server_.pid(); }

    void subscriber(const SubSpec& spec, RoleIo& io) override {
        asio::io_context ctx;
        auto client = connect(ctx, "bench-sub-" + std::to_string(spec.index));
        SubscriberCounter counter(spec.size);
        client->on_event([&](const bus::ClientEvent& e) {
            if (e.kind == bus::ClientEvent::Kind::slow_consumer)
                counter.result().told_dropped += e.dropped;
        });
        client->subscribe(subject,
                          [&](bus::Message& m) { counter.on_message(m.payload().size()); });
        std::error_code failure;
        client->flush([&](std::error_code ec) {
            if (ec) {
                failure = ec;
                return ctx.stop();
            }
            io.ready();
            if (spec.stalled)
                ctx.stop(); // and never run the loop again
        });
        ControlWatch control(
            ctx, io, [&](const std::string& line) { counter.on_control(line); },
            [&] { ctx.stop(); });
        asio::steady_timer check(ctx);
        std::function<void()> tick = [&] {
            check.expires_after(std::chrono::milliseconds(counter.poll_ms()));
            check.async_wait([&](boost::system::error_code ec) {
                if (ec)
                    return;
                if (counter.finished())
                    return ctx.stop();
                tick();
            });
        };
        tick();
        ctx.run();
        if (failure)
            throw std::system_error(failure, "subscribe");
        if (spec.stalled)
            io.wait_control();
        io.result(to_json(counter.result()));
    }

    void publisher(const PubSpec& spec, RoleIo& io) override {
        asio::io_context ctx;
        auto client = connect(ctx, "bench-pub");
        const std::string payload = make_payload(spec.size);
        PubResult r;
        client->on_event([&](const bus::ClientEvent& e) {
            if (e.kind == bus::ClientEvent::Kind::error)
                ++r.refused; // "not sent": the link refused it
        });
        Pacer pacer(spec.rate);
        SendTimer timer;
        std::uint64_t published = 0;
        int outstanding = 0;
        double blocked_since = 0; // while all windows are out
        double deadline = 0;
        bool finishing = false, scheduled = false;
        std::error_code failure;
        asio::steady_timer pace_timer(ctx);

        std::function<void()> pump;
        auto schedule = [&] {
            if (scheduled)
                return;
            scheduled = true;
            asio::post(ctx, [&] {
                scheduled = false;
                pump();
            });
        };
        auto finish_if_done = [&] {
            if (finishing && outstanding == 0)
                ctx.stop();
        };
        pump = [&] {
            if (failure || finishing)
                return;
            const double now = now_s();
            if (deadline == 0) {
                r.start = now;
                deadline = now + spec.seconds;
                pacer.start(now);
            }
            if (now >= deadline) {
                finishing = true;
                return finish_if_done();
            }
            if (outstanding >= windows) {
                if (blocked_since == 0)
                    blocked_since = now;
                return; // an acknowledgement resumes us
            }
            const std::uint64_t n = pacer.allowance(now, published, chunk);
            if (n == 0) {
                pace_timer.expires_after(std::chrono::microseconds(50));
                pace_timer.async_wait([&](boost::system::error_code ec) {
                    if (!ec)
                        pump();
                });
                return;
            }
            if (spec.time_sends) {
                timer.begin();
                for (std::uint64_t i = 0; i < n; ++i)
                    timer.time([&] {
                        client->publish_bytes(subject, payload);
                        return 0;
                    });
            } else {
                for (std::uint64_t i = 0; i < n; ++i)
                    client->publish_bytes(subject, payload);
            }
            published += n;
            r.end = now_s();
            ++outstanding;
            client->flush(
                [&](std::error_code ec) {
                    --outstanding;
                    if (ec) {
                        failure = ec;
                        return ctx.stop();
                    }
                    if (blocked_since != 0) {
                        r.max_wait_ms = std::max(r.max_wait_ms, (now_s() - blocked_since) * 1000);
                        blocked_since = 0;
                    }
                    if (finishing)
                        return finish_if_done();
                    schedule();
                },
                std::chrono::seconds(20));
            schedule();
        };
        schedule();
        ctx.run();
        if (failure)
            throw std::system_error(failure, "publisher flush");
        r.sent = published - std::min(published, r.refused);
        r.max_send_ms = timer.max_call_ms;
        r.max_blocked_ms = timer.max_blocked_ms;
        io.result(to_json(r));
        io.wait_control(); // until the subscribers are done: nothing is torn down under them
    }

    void responder(RoleIo& io) override {
        asio::io_context ctx;
        auto client = connect(ctx, "bench-echo");
        client->serve(service, [](bus::Message& request, bus::Responder& responder) {
            responder.reply_bytes(request.payload());
        });
        std::error_code failure;
        client->flush([&](std::error_code ec) {
            if (ec) {
                failure = ec;
                return ctx.stop();
            }
            io.ready();
        });
        ControlWatch control(
            ctx, io, [](const std::string&) {}, [&] { ctx.stop(); });
        ctx.run();
        if (failure)
            throw std::system_error(failure, "serve");
    }

    void requester(const ReqSpec& spec, RoleIo& io) override {
        asio::io_context ctx;
        auto client = connect(ctx, "bench-req");
        const std::string payload = make_payload(spec.size);
        RoundTrips trips(spec);
        std::error_code failure;
        std::function<void()> issue = [&] {
            const std::uint64_t seq = trips.sent();
            client->request_bytes(
                service, payload, std::chrono::seconds(5),
                [&, seq](std::error_code ec, bus::Message& reply) {
                    if (ec || reply.payload().size() != spec.size) {
                        failure = ec ? ec : std::make_error_code(std::errc::bad_message);
                        return ctx.stop();
                    }
                    if (trips.answered(seq))
                        issue();
                    else if (trips.outstanding() == 0)
                        ctx.stop();
                });
        };
        asio::post(ctx, [&] {
            for (int i = 0; i < spec.in_flight; ++i)
                issue();
        });
        ctx.run();
        if (failure)
            throw std::system_error(failure, "request");
        io.result(to_json(trips.result()));
    }

private:
    std::shared_ptr<bus::Client> connect(asio::io_context& ctx, const std::string& name) {
        bus::ClientOptions options;
        options.name = name;
        return bus::Client::connect(ctx, endpoint_, options).value();
    }

    Paths paths_;
    std::string transport_;
    std::vector<std::string> busd_args_;
    std::string endpoint_;
    Server server_;
};

} // namespace

std::unique_ptr<Peer> make_bus_peer(const Paths& paths, const std::string& transport,
                                    std::vector<std::string> busd_args) {
    return std::make_unique<BusPeer>(paths, transport, std::move(busd_args));
}

} // namespace bench::broker
