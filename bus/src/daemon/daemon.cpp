// The composition root of busd (bus/daemon.hpp): the broker, the cluster supervisor wired to
// it (each worker's bus link, the cluster's events, `$sys.cluster.*` control), the HTTP face
// (http/face.hpp) when asked for, and signals.
#include "bus/daemon.hpp"

#include "bridge/config.hpp"
#include "bridge/nats_bridge.hpp"
#include "bus/broker_config.hpp"
#include "bus/endpoint.hpp"
#include "core/toml_reader.hpp"
#include "http/face.hpp"

#include <boost/asio/signal_set.hpp>

#include <zmq.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>

#include <fcntl.h>
#include <unistd.h>

namespace bus::daemon {
namespace {

namespace asio = boost::asio;

constexpr std::size_t curve_key_length = 40; // Z85

std::string default_apps_log_dir() {
    if (const char* state = std::getenv("XDG_STATE_HOME"); state && *state == '/')
        return std::string(state) + "/bus/logs";
    if (const char* home = std::getenv("HOME"); home && *home == '/')
        return std::string(home) + "/.local/state/bus/logs";
    auto dir = runtime_dir();
    return (dir ? dir.value() : std::string("/tmp")) + "/logs";
}

void load_curve_keys(const std::string& path, broker::Options& options) {
    auto keys = detail::parse_toml_file(path);
    options.curve_public_key = keys["public"].value_or(std::string());
    options.curve_secret_key = keys["secret"].value_or(std::string());
    if (options.curve_public_key.size() != curve_key_length ||
        options.curve_secret_key.size() != curve_key_length)
        throw ConfigError("key file " + path +
                          ": needs public and secret keys (Z85, 40 characters each)");
}

// What failed to start, for a person.
std::string explain_bind_failure(std::error_code ec, const std::string& endpoint) {
    if (ec == std::errc::address_in_use)
        return "another busd already serves " + endpoint;
    if (ec == errc::forbidden)
        return endpoint + " needs --curve-keys (busd --generate-keys FILE makes a pair)";
    return "cannot serve " + endpoint + ": " + ec.message();
}

// Where workers reach the bus: unix:// if busd serves it, else ipc://.
std::string local_endpoint(const std::vector<std::string>& served) {
    for (const char* scheme : {"unix://", "ipc://"}) {
        auto it = std::find_if(served.begin(), served.end(),
                               [&](const std::string& e) { return e.starts_with(scheme); });
        if (it != served.end())
            return *it;
    }
    return {};
}

// Beside busd's local socket (where `http_token_beside` looks for it), else in the runtime
// directory; empty if neither is there.
std::string http_token_file(const std::vector<std::string>& served) {
    if (const auto local = local_endpoint(served); !local.empty())
        if (auto beside = http_token_beside(local))
            return beside.value();
    auto dir = runtime_dir();
    return dir ? dir.value() + "/http.token" : std::string();
}

// [http] in busd's config file.
void load_http(const std::string& path, HttpConfig& http) {
    const toml::table root = detail::parse_toml_file(path);
    const detail::TomlReader r(path, root);
    const auto table = r.table("http");
    if (!table)
        return;
    table->only({"listen", "max_connections", "request_timeout_ms"});
    if (auto listen = table->string("listen")) {
        if (listen->empty())
            table->fail("listen", "must be \"ADDR:PORT\", such as \"127.0.0.1:9180\"");
        http.listen = std::move(*listen);
    }
    table->integer("max_connections", http.max_connections, 1, 100000);
    table->duration("request_timeout_ms", http.request_timeout, 100, 600000);
}

} // namespace

Config load_config(const std::string& config_file, const std::vector<std::string>& endpoints,
                   const std::string& curve_keys_file) {
    Config config;
    if (!config_file.empty()) {
        config.broker = broker::load_config(config_file);
        config.apps = cluster::load_apps(config_file);
        load_http(config_file, config.http);
        config.bridges = bridge::load_nats_bridges(config_file);
    }
    if (!endpoints.empty())
        config.broker.endpoints = endpoints;
    else if (const char* env = std::getenv("BUS_ENDPOINT");
             env && *env && config.broker.endpoints.empty())
        config.broker.endpoints = {env};
    if (!curve_keys_file.empty())
        load_curve_keys(curve_keys_file, config.broker);
    return config;
}

std::string generate_curve_keys(const std::string& path) {
    char public_key[curve_key_length + 1], secret_key[curve_key_length + 1];
    if (zmq_curve_keypair(public_key, secret_key) != 0)
        throw std::runtime_error("this libzmq has no CURVE support");
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        throw std::runtime_error("cannot create " + path + ": " + std::strerror(errno));
    const std::string text =
        std::string("public = \"") + public_key + "\"\nsecret = \"" + secret_key + "\"\n";
    const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    ::close(fd);
    if (!ok)
        throw std::runtime_error("cannot write " + path);
    return public_key;
}

struct Daemon::Impl {
    explicit Impl(asio::io_context& io_) : io(io_) {}

    // `$sys.cluster.<op>`: ls, reload, restart, start, stop, scale, delete, and logs.
    broker::Broker::SysAnswer cluster_request(const std::string& subject, std::string_view payload,
                                              std::uint32_t uid) {
        broker::Broker::SysAnswer answer;
        v1::ClusterCommand command;
        if (!cluster) {
            answer.error = errc::no_responders;
            answer.detail = "busd is stopping";
            return answer;
        }
        if (!command.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
            answer.detail = "the payload is not a bus.v1.ClusterCommand";
            return answer;
        }
        std::error_code ec;
        const std::string op = subject.substr(std::string_view("$sys.cluster.").size());
        const bool privileged = uid == ::getuid();
        if (op == "logs") {
            auto tail = std::make_unique<v1::LogTail>();
            ec = cluster->logs(command, privileged, *tail, answer.detail);
            if (!ec)
                answer.reply = std::move(tail);
        } else {
            auto apps = std::make_unique<v1::ClusterList>();
            ec = cluster->control(op, command, privileged, *apps, answer.detail);
            if (!ec)
                answer.reply = std::move(apps);
        }
        if (ec && ec.category() == bus_category())
            answer.error = static_cast<errc>(ec.value());
        return answer;
    }

    // Before the endpoints exist: a SIGTERM as soon as a client can connect is a clean stop (a
    // signal_set keeps a signal that arrives before the wait).
    void handle_signals(std::function<void()> stopped) {
        finished = std::move(stopped);
        signals.emplace(io, SIGINT, SIGTERM);
        reload.emplace(io, SIGHUP);
        wait_reload();
        wait_signal();
    }

    void wait_reload() {
        reload->async_wait([this](boost::system::error_code ec, int) {
            if (ec)
                return;
            if (cluster)
                cluster->reload();
            wait_reload();
        });
    }

    void wait_signal() {
        signals->async_wait([this](boost::system::error_code ec, int signal) {
            if (ec)
                return;
            if (log)
                log("signal " + std::to_string(signal) + ", stopping");
            if (cluster && !stopping) {
                reload->cancel();
                stop([this] { finished(); });
                return wait_signal();
            }
            finish();
            finished();
        });
    }

    void stop(std::function<void()> done) {
        stopping = true;
        if (!cluster) {
            finish();
            return done();
        }
        cluster->stop([this, done = std::move(done)] {
            finish();
            done();
        });
    }

    // The cluster first (its workers' links are the broker's clients), then the broker.
    void finish() {
        signals.reset();
        reload.reset();
        http.reset();
        bridges.clear();
        cluster.reset();
        broker.reset();
    }

    asio::io_context& io;
    std::function<void(const std::string&)> log;
    std::unique_ptr<broker::Broker> broker;
    std::unique_ptr<cluster::Supervisor> cluster;
    std::unique_ptr<http::Face> http;
    std::vector<std::unique_ptr<bridge::NatsBridge>> bridges;
    std::vector<std::string> endpoints;
    std::optional<asio::signal_set> signals; // SIGINT, SIGTERM
    std::optional<asio::signal_set> reload;  // SIGHUP
    std::function<void()> finished;
    bool stopping = false;
};

Daemon::Daemon(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Daemon::~Daemon() {
    impl_->finish();
}

Result<std::unique_ptr<Daemon>> Daemon::start(asio::io_context& io, Config config,
                                              std::string* why) {
    auto impl = std::make_unique<Impl>(io);
    impl->log = config.log;
    if (config.stopped_by_signal)
        impl->handle_signals(std::move(config.stopped_by_signal));
    std::string failed;
    auto broker = broker::Broker::start(io, std::move(config.broker), &failed);
    if (!broker) {
        if (why)
            *why = explain_bind_failure(broker.error(), failed);
        return broker.error();
    }
    impl->broker = std::move(broker).value();
    impl->endpoints = impl->broker->endpoints();

    // The cluster: [[app]] workers, each a child with a channel, told where the broker is.
    // Always there, even with no [[app]]: `bus cluster start` adds apps at run time.
    cluster::Supervisor::Options cluster_options;
    if (auto local = local_endpoint(impl->endpoints); !local.empty()) {
        cluster_options.env.push_back("BUS_ENDPOINT=" + local);
        // Workers busd did not start join its apps here (Worker::join).
        if (auto path = cluster_socket_beside(local))
            cluster_options.join_path = path.value();
    }
    cluster_options.log = config.log;
    cluster_options.log_dir =
        config.apps_log_dir.empty() ? default_apps_log_dir() : config.apps_log_dir;
    auto* b = impl->broker.get();
    cluster_options.bus_link = [b](UniqueFd socket, pid_t pid) {
        b->adopt(std::move(socket), pid);
    };
    cluster_options.event = [b](const std::string& subject,
                                const google::protobuf::Message& event) {
        b->publish_event(subject, event);
    };
    auto cluster =
        cluster::Supervisor::start(io, std::move(config.apps), std::move(cluster_options), &failed);
    if (!cluster) {
        if (why)
            *why = failed;
        return cluster.error();
    }
    impl->cluster = std::move(cluster).value();
    auto* i = impl.get();
    impl->broker->on_sys_request("$sys.cluster.", [i](const std::string& subject,
                                                      std::string_view payload, std::uint32_t uid) {
        return i->cluster_request(subject, payload, uid);
    });

    // Bridges ([[bridge.nats]]) before the HTTP face, whose /metrics reports them.
    for (auto& bridge_config : config.bridges) {
        auto bridge =
            bridge::NatsBridge::start(io, *impl->broker, std::move(bridge_config), config.log, why);
        if (!bridge)
            return bridge.error();
        impl->bridges.push_back(std::move(bridge).value());
    }
    if (!impl->bridges.empty()) {
        impl->broker->on_local_service([i](const std::string& name, bool served) {
            for (auto& bridge : i->bridges)
                bridge->local_service(name, served);
        });
        impl->broker->on_bridges([i] {
            v1::BridgeList list;
            for (const auto& bridge : i->bridges)
                *list.add_bridges() = bridge->info();
            return list;
        });
    }

    if (!config.http.listen.empty()) {
        http::Options http;
        http.listen = config.http.listen;
        http.limits.max_connections = config.http.max_connections;
        http.limits.request_timeout = config.http.request_timeout;
        http.token_file = config.http.token_file.empty() ? http_token_file(impl->endpoints)
                                                         : config.http.token_file;
        if (http.token_file.empty()) {
            if (why)
                *why = "no directory for http.token: busd serves no local endpoint and has no "
                       "runtime directory";
            return make_error_code(std::errc::no_such_file_or_directory);
        }
        auto face = http::Face::start(io, *impl->broker, std::move(http), why);
        if (!face)
            return face.error();
        impl->http = std::move(face).value();
    }
    return std::unique_ptr<Daemon>(new Daemon(std::move(impl)));
}

void Daemon::stop(std::function<void()> done) {
    impl_->stop(std::move(done));
}

const std::vector<std::string>& Daemon::endpoints() const noexcept {
    return impl_->endpoints;
}

const std::string& Daemon::http_url() const noexcept {
    static const std::string none;
    return impl_->http ? impl_->http->url() : none;
}

broker::Broker& Daemon::broker() noexcept {
    return *impl_->broker;
}

} // namespace bus::daemon
