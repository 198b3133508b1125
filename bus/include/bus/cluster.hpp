// bus::cluster::Worker: the worker side of busd's cluster mode (docs/cluster.md).
//
// busd owns an app's listening sockets, accepts, and hands each connection to one ready worker
// as a NewConn message carrying the fd over the worker's channel (the one spawn() gave it).
// The Worker picks that channel up, gives the application each connection as an owned fd with
// the peer's address, and acknowledges it (busd closes its copy only then, and hands the
// connection to another worker if this one dies first). It answers busd's heartbeats from the
// application's loop, so a loop that is stuck is noticed, and it turns Shutdown (a reload, a
// stop, busd stopping) and the end of the channel (busd gone) into one on_shutdown call.
//
//   boost::asio::io_context io;
//   auto worker = bus::cluster::Worker::from_parent(io).value();
//   worker->on_connection([&](bus::cluster::Connection c) { serve(std::move(c.fd)); });
//   worker->on_shutdown([&](std::chrono::milliseconds grace) { drain_then_exit(grace); });
//   worker->ready();
//   io.run();
//
// Threading: like Channel, a Worker lives on one io_context run by one thread.
#pragma once

#include "bus/channel.hpp"
#include "bus/error.hpp"
#include "bus/unique_fd.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace bus::cluster {

// One accepted connection, now owned by the worker.
//
// In the `shared` and `reuseport` modes the worker accepts itself: busd sends it the app's
// listening socket (shared) or the address to bind with SO_REUSEPORT (reuseport) once it is
// ready, and the Worker accepts on the application's loop and calls the same on_connection
// handler. The application's code is the same in every mode.
struct Connection {
    UniqueFd fd;               // a connected, non-blocking, close-on-exec TCP socket
    std::string peer_address;  // "127.0.0.1:40512"
    std::string local_address; // "127.0.0.1:8080"
    std::uint64_t id = 0;      // busd's number for it (0 when the worker accepted it)
};

class Worker {
public:
    using ConnectionHandler = std::function<void(Connection)>;
    // `grace`: how long busd waits before it kills the worker. Called once: for Shutdown, and
    // when the channel to busd ends (busd stopped or died), then with the default grace.
    using ShutdownHandler = std::function<void(std::chrono::milliseconds grace)>;

    // The channel busd left on BUS_CHANNEL_FD; errc::no_parent_channel when not started by busd.
    // SIGTERM then means shutdown too (with the default grace): busd asks its workers for
    // it as their parent-death signal, so a worker whose busd was killed outright drains.
    //
    // Started by a Node.js `cluster` primary instead (NODE_UNIQUE_ID and NODE_CHANNEL_FD), the
    // worker speaks Node's cluster protocol, beside the primary's JavaScript workers: online,
    // queryServer and listening for each address in BUS_LISTEN (tcp://HOST:PORT, comma
    // separated; an empty HOST is Node's `listen(port)`), which the primary gives with
    // `cluster.fork({BUS_LISTEN: ...})`; newconn (round robin) or the listening socket itself
    // (NODE_CLUSTER_SCHED_POLICY=none) to on_connection; the primary's disconnect to
    // on_shutdown. There are no heartbeats, load reports or replacements there. A worker that
    // cannot listen (no BUS_LISTEN, a bad address, the primary's errno) says why on stderr and
    // exits 1, as a JavaScript worker whose listen() failed does. docs/cluster.md.
    static Result<std::unique_ptr<Worker>> from_parent(boost::asio::io_context& io);
    // A worker busd did not start (by hand, by systemd, under another supervisor) joins `app`
    // of the busd serving `endpoint` (default: BUS_ENDPOINT, else busd's default), through
    // busd's cluster socket beside it; as busd's own user only. Waits up to `timeout` for
    // busd's answer; on refusal (no such app, not running) `reason` (if given) says why. busd
    // dispatches to it, heartbeats it and drops it when it goes, but never restarts or kills it.
    static Result<std::unique_ptr<Worker>>
    join(boost::asio::io_context& io, const std::string& app, const std::string& endpoint = {},
         std::chrono::milliseconds timeout = std::chrono::seconds(5),
         std::string* reason = nullptr);
    // On a channel made some other way (tests).
    static std::unique_ptr<Worker> adopt(boost::asio::io_context& io,
                                         std::shared_ptr<Channel> channel);

    ~Worker();
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    // Each connection is acknowledged once the handler returns. Until a handler is set,
    // connections are refused back to busd, which gives them to another worker.
    void on_connection(ConnectionHandler handler) { on_connection_ = std::move(handler); }
    // With no handler, shutdown ends the process (std::exit(0)) at once.
    void on_shutdown(ShutdownHandler handler) { on_shutdown_ = std::move(handler); }

    // Tells busd this worker takes connections. Until then it gets none.
    void ready();
    // Open connections now, for least_connections dispatch. Also sent with every heartbeat
    // answer; call it when the number changes. Reports are coalesced: at most one per
    // load_interval leaves, carrying the latest value.
    void report_load(std::uint32_t open_connections);
    // Asks busd to start a new worker in this one's place; this one then gets Shutdown.
    void request_replacement(const std::string& reason);

    // From the environment busd gives its workers: BUS_APP, BUS_INSTANCE (0 when absent); for
    // a worker that joined, the app it joined and the instance number busd gave it; under a
    // Node primary, the worker's cluster id (NODE_UNIQUE_ID).
    const std::string& app() const noexcept { return app_; }
    int instance() const noexcept { return instance_; }
    bool shutting_down() const noexcept { return shutting_down_; }
    // Grace used when the channel ends without a Shutdown.
    static constexpr std::chrono::milliseconds default_grace{5000};
    static constexpr std::chrono::milliseconds load_interval{10};

private:
    struct Listener {
        Listener(boost::asio::io_context& io, int fd, std::string local)
            : socket(io, fd), address(std::move(local)) {}
        boost::asio::posix::stream_descriptor socket;
        std::string address; // HOST:PORT
    };
    // Node's cluster protocol (worker_node.cpp).
    struct NodePrimary;

    Worker(boost::asio::io_context& io, std::shared_ptr<Channel> channel);
    void handle(Message& message);
    void listen(const std::string& address, bool reuseport, std::vector<UniqueFd>& fds);
    void add_listener(UniqueFd fd);
    void node_start(int id);
    void node_ready();
    void node_handle(Message& message);
    void node_fail(const std::string& why);
    void accept(Listener& listener);
    void accept_batch(Listener& listener);
    void shutdown(std::chrono::milliseconds grace);
    void send_load();

    boost::asio::io_context& io_;
    std::shared_ptr<Channel> channel_;
    std::unique_ptr<boost::asio::signal_set> signals_;
    std::vector<std::unique_ptr<Listener>> listeners_;
    std::unique_ptr<NodePrimary> node_; // set when a Node primary started this worker
    std::shared_ptr<int> alive_ = std::make_shared<int>(0);
    std::string app_;
    int instance_ = 0;
    std::uint32_t load_ = 0;
    boost::asio::steady_timer load_timer_;
    std::chrono::steady_clock::time_point last_load_sent_{};
    bool load_timer_armed_ = false;
    bool shutting_down_ = false;
    ConnectionHandler on_connection_;
    ShutdownHandler on_shutdown_;
};

} // namespace bus::cluster
