// The daemon: busd as one object. It composes the broker (router and endpoints), the cluster
// supervisor and the `$sys.cluster.*` control it answers, and the signals busd obeys, from one
// Config; busd's main parses its command line into a Config and runs a Daemon, and tests run a
// whole busd in-process the same way. Faces that busd grows (HTTP, bridges) plug in here.
#pragma once

#include "bus/broker.hpp"
#include "bus/cluster_supervisor.hpp"

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace bus::daemon {

// busd's HTTP face (docs/http.md): /metrics for Prometheus, the JSON API, server-sent events
// and the dashboard. Off unless `listen` is set.
struct HttpConfig {
    std::string listen; // "ADDR:PORT" ("127.0.0.1:0": a free port), or ":PORT" for loopback
    std::size_t max_connections = 256;
    std::chrono::milliseconds request_timeout{10000}; // for a request to arrive whole
    // The bearer token's file; empty: http.token beside busd's local endpoint.
    std::string token_file;
};

// One `[[bridge.nats]]` table: busd as a leaf of a NATS cluster (docs/bridge.md).
struct NatsBridgeConfig {
    std::string name;                  // for $sys.bridges and logs
    std::vector<std::string> servers;  // "nats://HOST:PORT" or "tls://HOST:PORT"
    std::vector<std::string> exports;  // local publishes and services, seen on NATS
    std::vector<std::string> imports;  // NATS messages and services, seen locally
    std::vector<std::string> durables; // through JetStream (exported and imported)
    // Credentials: at most one of user/password, token, nkey (public key + seed file), creds.
    std::string user, password, token, nkey, nkey_seed, creds;
    std::string tls_ca, tls_cert, tls_key; // tls = { ca, cert, key }
    // What is published while no server is connected is held up to this many bytes, then
    // dropped and counted.
    std::size_t buffer_bytes = 8u << 20;
    // Messages from NATS waiting for busd's loop, at most; beyond, dropped and counted.
    std::size_t max_pending = 65536;
    // How long a request from NATS may take a local service (NATS requests carry no deadline
    // unless they come from another busd's bridge).
    std::chrono::milliseconds request_timeout{5000};
    // This busd's durable consumer (JetStream); empty: the host's name.
    std::string durable_name;
};

struct Config {
    broker::Options broker;
    HttpConfig http;
    std::vector<NatsBridgeConfig> bridges;
    std::vector<cluster::AppConfig> apps;
    // Where cluster apps' output is kept (APP.log); empty: $XDG_STATE_HOME/bus/logs, else
    // ~/.local/state/bus/logs, else beside the sockets.
    std::string apps_log_dir;
    // One line per event worth telling (busd prints them on stderr).
    std::function<void(const std::string&)> log;
    // Set: the daemon obeys the process's signals, as busd does, from before its endpoints
    // bind: SIGHUP reloads every app with zero downtime; SIGTERM or SIGINT stops gracefully (a
    // second one stops at once), and then this is called. Unset: signals are left alone.
    std::function<void()> stopped_by_signal;
};

// busd's config from its sources, each over the one before: the TOML file (`config_file`, may
// be empty; its [http] table: listen, max_connections, request_timeout_ms), then BUS_ENDPOINT when
// neither the file nor the command line names an endpoint, then `endpoints` from the command line;
// `curve_keys_file` (may be empty) holds the CURVE key pair for tcp://. Throws ConfigError naming
// the file and key.
Config load_config(const std::string& config_file, const std::vector<std::string>& endpoints,
                   const std::string& curve_keys_file);

// Writes a new CURVE key pair to `path` (created 0600, never overwritten) and returns its
// public key; throws std::runtime_error saying why it could not.
std::string generate_curve_keys(const std::string& path);

class Daemon {
public:
    // Binds every endpoint and starts the cluster's apps. On failure, `why` says what failed in
    // a sentence for a person ("another busd already serves unix:///...").
    static Result<std::unique_ptr<Daemon>> start(boost::asio::io_context& io, Config config,
                                                 std::string* why = nullptr);
    // Kills whatever the cluster still runs; unlinks the endpoints' socket files.
    ~Daemon();
    Daemon(const Daemon&) = delete;
    Daemon& operator=(const Daemon&) = delete;

    // Graceful stop: workers finish what they hold, then the broker closes; then `done`.
    void stop(std::function<void()> done);

    const std::vector<std::string>& endpoints() const noexcept;
    // "http://ADDR:PORT" when the HTTP face is on, else empty.
    const std::string& http_url() const noexcept;
    // Valid until the daemon stops.
    broker::Broker& broker() noexcept;

    struct Impl;

private:
    explicit Daemon(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

} // namespace bus::daemon
