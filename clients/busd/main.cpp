// busd: the bus broker daemon. A thin main around bus::broker::Broker: options, config file,
// signals, and (with --daemon) detaching as PM2's daemon does. Runs in the foreground by
// default, which is what systemd wants (scripts/busd.service).
#include <bus/broker.hpp>
#include <bus/broker_config.hpp>
#include <bus/cluster_supervisor.hpp>
#include <bus/endpoint.hpp>

#include <boost/asio/signal_set.hpp>

#include <CLI/CLI.hpp>
#include <toml++/toml.h>
#include <zmq.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

// Detaches: fork, setsid, fork again; output goes to `log_file`. Returns in the daemon with
// `ready` (a pipe) to write one byte to once it serves; the foreground process exits with 0
// when that byte arrives and 1 when the daemon fails first.
int daemonize(const std::string& log_file, int& ready) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) < 0)
        return -1;
    const pid_t first = ::fork();
    if (first < 0)
        return -1;
    if (first > 0) {
        ::close(p[1]);
        char ok = 0;
        const ssize_t n = ::read(p[0], &ok, 1);
        std::_Exit(n == 1 ? 0 : 1);
    }
    ::close(p[0]);
    ::setsid();
    if (::fork() != 0)
        std::_Exit(0);
    const int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    const int log = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (null < 0 || log < 0) {
        std::fprintf(stderr, "busd: cannot open log file %s: %s\n", log_file.c_str(),
                     std::strerror(errno));
        std::_Exit(1);
    }
    ::dup2(null, 0);
    ::dup2(log, 1);
    ::dup2(log, 2);
    ::close(null);
    ::close(log);
    ready = p[1];
    return 0;
}

} // namespace

// Cluster apps' output: $XDG_STATE_HOME/bus/logs, ~/.local/state/bus/logs, or beside the
// sockets for a user with no home.
static std::string default_apps_log_dir() {
    if (const char* state = std::getenv("XDG_STATE_HOME"); state && *state == '/')
        return std::string(state) + "/bus/logs";
    if (const char* home = std::getenv("HOME"); home && *home == '/')
        return std::string(home) + "/.local/state/bus/logs";
    auto dir = bus::runtime_dir();
    return (dir ? dir.value() : std::string("/tmp")) + "/logs";
}

int main(int argc, char** argv) {
    CLI::App app{"busd: the bus broker. Routes typed messages between processes over ZeroMQ "
                 "(ipc://) and unix:// sockets.\n\nWith no options it serves "
                 "$XDG_RUNTIME_DIR/bus/busd.zmq and busd.sock (or /tmp/bus-$UID/...)."};
    std::vector<std::string> endpoints, listen;
    std::string config_file, pid_file, log_file, keys_file, generate_keys, apps_log_dir;
    bool daemon = false;
    app.add_option("-e,--endpoint", endpoints,
                   "endpoint to serve: ipc://PATH or unix://PATH (repeatable; default: "
                   "BUS_ENDPOINT, else both defaults)");
    app.add_option("-c,--config", config_file, "TOML config file (see bus/broker_config.hpp)")
        ->check(CLI::ExistingFile);
    app.add_option("--listen", listen, "tcp://HOST:PORT for other hosts (requires --curve-keys)");
    app.add_option("--curve-keys", keys_file,
                   "CURVE key pair for tcp:// (a file with public = \"...\" and secret = "
                   "\"...\", Z85)")
        ->check(CLI::ExistingFile);
    app.add_option("--generate-keys", generate_keys,
                   "write a new CURVE key pair to FILE (mode 0600), print its public key, exit");
    app.add_flag("-d,--daemon", daemon, "detach, with a pid file and a log file");
    app.add_option("--pid-file", pid_file, "with --daemon (default: RUNTIME_DIR/busd.pid)");
    app.add_option("--log-file", log_file, "with --daemon (default: RUNTIME_DIR/busd.log)");
    app.add_option("--apps-log-dir", apps_log_dir,
                   "where cluster apps' output is kept, APP.log (default: "
                   "$XDG_STATE_HOME/bus/logs, else ~/.local/state/bus/logs)");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        // --help and --version print and exit 0; a bad option is a usage error, 2, as a bad
        // config file is (CLI11's own codes, such as 109, mean nothing to a supervisor).
        const int shown = app.exit(e);
        return shown == 0 ? 0 : 2;
    }

    if (!generate_keys.empty()) {
        char public_key[41], secret_key[41];
        if (zmq_curve_keypair(public_key, secret_key) != 0) {
            std::fprintf(stderr, "busd: this libzmq has no CURVE support\n");
            return 1;
        }
        const int fd = ::open(generate_keys.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) {
            std::fprintf(stderr, "busd: cannot create %s: %s\n", generate_keys.c_str(),
                         std::strerror(errno));
            return 1;
        }
        const std::string text =
            std::string("public = \"") + public_key + "\"\nsecret = \"" + secret_key + "\"\n";
        const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
        ::close(fd);
        if (!ok)
            return 1;
        std::printf("%s\n", public_key);
        return 0;
    }

    bus::broker::Options options;
    std::vector<bus::cluster::AppConfig> apps;
    if (!config_file.empty()) {
        try {
            options = bus::broker::load_config(config_file);
            apps = bus::cluster::load_apps(config_file);
        } catch (const bus::ConfigError& e) {
            std::fprintf(stderr, "busd: bad config: %s\n", e.what());
            return 2;
        }
    }
    if (!endpoints.empty() || !listen.empty()) {
        options.endpoints = endpoints;
        options.endpoints.insert(options.endpoints.end(), listen.begin(), listen.end());
    } else if (const char* env = std::getenv("BUS_ENDPOINT");
               env && *env && options.endpoints.empty()) {
        options.endpoints = {env};
    }

    if (!keys_file.empty()) {
        try {
            auto keys = toml::parse_file(keys_file);
            options.curve_public_key = keys["public"].value_or(std::string());
            options.curve_secret_key = keys["secret"].value_or(std::string());
        } catch (const toml::parse_error& e) {
            std::fprintf(stderr, "busd: bad key file %s: %s\n", keys_file.c_str(),
                         std::string(e.description()).c_str());
            return 2;
        }
        if (options.curve_public_key.size() != 40 || options.curve_secret_key.size() != 40) {
            std::fprintf(stderr,
                         "busd: key file %s needs public and secret keys (Z85, 40 "
                         "characters each)\n",
                         keys_file.c_str());
            return 2;
        }
    }

    int ready = -1;
    if (daemon) {
        auto dir = bus::runtime_dir();
        if (!dir) {
            std::fprintf(stderr, "busd: no runtime directory: %s\n", dir.error().message().c_str());
            return 1;
        }
        if (pid_file.empty())
            pid_file = dir.value() + "/busd.pid";
        if (log_file.empty())
            log_file = dir.value() + "/busd.log";
        if (daemonize(log_file, ready) < 0) {
            std::fprintf(stderr, "busd: cannot detach: %s\n", std::strerror(errno));
            return 1;
        }
    }

    // busd is one thread: the loop needs no locks (measured: the scheduler's mutex was ~5% of
    // busd's instructions per routed message).
    boost::asio::io_context io(BOOST_ASIO_CONCURRENCY_HINT_UNSAFE);
    bool stopping = false;
    // Before the endpoints exist: a SIGTERM as soon as a client can connect is a clean stop
    // (the set keeps a signal that arrives before the wait below).
    boost::asio::signal_set signals(io, SIGINT, SIGTERM);
    boost::asio::signal_set reload(io, SIGHUP); // reloads the cluster's apps, below
    std::string failed;
    auto broker = bus::broker::Broker::start(io, options, &failed);
    if (!broker) {
        if (broker.error() == std::errc::address_in_use)
            std::fprintf(stderr, "busd: another busd already serves %s\n", failed.c_str());
        else if (broker.error() == bus::errc::forbidden)
            std::fprintf(stderr,
                         "busd: %s needs --curve-keys (busd --generate-keys FILE makes "
                         "a pair)\n",
                         failed.c_str());
        else
            std::fprintf(stderr, "busd: cannot serve %s: %s\n", failed.c_str(),
                         broker.error().message().c_str());
        return 1;
    }
    std::string list;
    for (const auto& e : broker.value()->endpoints())
        list += (list.empty() ? "" : ", ") + e;
    std::fprintf(stderr, "busd: serving %s (pid %d)\n", list.c_str(), static_cast<int>(::getpid()));
    std::fflush(stderr);
    if (daemon) {
        std::ofstream(pid_file) << ::getpid() << "\n";
        const char ok = 1;
        (void)!::write(ready, &ok, 1);
        ::close(ready);
    }

    // The cluster: [[app]] workers, each a child with a channel, told where the broker is.
    // Always there, even with no [[app]]: `bus cluster start` adds apps at run time.
    std::unique_ptr<bus::cluster::Supervisor> cluster;
    {
        bus::cluster::Supervisor::Options cluster_options;
        const auto& served = broker.value()->endpoints();
        auto local = std::find_if(served.begin(), served.end(),
                                  [](const std::string& e) { return e.starts_with("unix://"); });
        if (local == served.end())
            local = std::find_if(served.begin(), served.end(),
                                 [](const std::string& e) { return e.starts_with("ipc://"); });
        if (local != served.end()) {
            cluster_options.env.push_back("BUS_ENDPOINT=" + *local);
            // Workers busd did not start join its apps here (Worker::join).
            if (auto path = bus::cluster_socket_beside(*local))
                cluster_options.join_path = path.value();
        }
        cluster_options.log = [](const std::string& line) {
            std::fprintf(stderr, "busd: %s\n", line.c_str());
            std::fflush(stderr);
        };
        cluster_options.log_dir = apps_log_dir.empty() ? default_apps_log_dir() : apps_log_dir;
        cluster_options.bus_link = [&broker](bus::UniqueFd socket, pid_t pid) {
            broker.value()->adopt(std::move(socket), pid);
        };
        cluster_options.event = [&broker](const std::string& subject,
                                          const google::protobuf::Message& event) {
            broker.value()->publish_event(subject, event);
        };
        std::string failed_app;
        auto started = bus::cluster::Supervisor::start(io, std::move(apps),
                                                       std::move(cluster_options), &failed_app);
        if (!started) {
            std::fprintf(stderr, "busd: %s\n", failed_app.c_str());
            return 1;
        }
        cluster = std::move(started).value();
        // Control at run time: $sys.cluster.ls, .reload, .restart, .start, .stop, .scale,
        // .delete, and .logs.
        broker.value()->on_sys_request(
            "$sys.cluster.",
            [&cluster](const std::string& subject, std::string_view payload, std::uint32_t uid) {
                bus::broker::Broker::SysAnswer answer;
                bus::v1::ClusterCommand command;
                if (!cluster) {
                    answer.error = bus::errc::no_responders;
                    answer.detail = "busd is stopping";
                    return answer;
                }
                if (!command.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
                    answer.detail = "the payload is not a bus.v1.ClusterCommand";
                    return answer;
                }
                std::error_code ec;
                const std::string op = subject.substr(13);
                if (op == "logs") {
                    auto tail = std::make_unique<bus::v1::LogTail>();
                    ec = cluster->logs(command, uid == ::getuid(), *tail, answer.detail);
                    if (!ec)
                        answer.reply = std::move(tail);
                } else {
                    auto apps_now = std::make_unique<bus::v1::ClusterList>();
                    ec = cluster->control(op, command, uid == ::getuid(), *apps_now, answer.detail);
                    if (!ec)
                        answer.reply = std::move(apps_now);
                }
                if (ec && ec.category() == bus::bus_category())
                    answer.error = static_cast<bus::errc>(ec.value());
                return answer;
            });
    }

    // SIGHUP: zero-downtime reload of every app. SIGTERM/SIGINT: workers shut down gracefully
    // (a second signal stops at once).
    std::function<void()> wait_reload = [&] {
        reload.async_wait([&](boost::system::error_code ec, int) {
            if (ec)
                return;
            if (cluster)
                cluster->reload();
            wait_reload();
        });
    };
    wait_reload();
    auto finish = [&] {
        cluster.reset();
        broker.value().reset();
        io.stop();
    };
    std::function<void()> wait_signal = [&] {
        signals.async_wait([&](boost::system::error_code ec, int signal) {
            if (ec)
                return;
            std::fprintf(stderr, "busd: signal %d, stopping\n", signal);
            if (cluster && !stopping) {
                stopping = true;
                reload.cancel();
                cluster->stop(finish);
                return wait_signal();
            }
            finish();
        });
    };
    wait_signal();
    io.run();
    if (daemon)
        ::unlink(pid_file.c_str());
    return 0;
}
