// busd: the bus broker daemon. A thin main: it parses the command line into a
// bus::daemon::Config and runs a bus::daemon::Daemon (bus/daemon.hpp), in the foreground by
// default, which is what systemd wants (packaging/systemd/busd.service), or detached with
// --daemon.
#include "detach.hpp"

#include <bus/broker_config.hpp>
#include <bus/daemon.hpp>
#include <bus/endpoint.hpp>

#include <CLI/CLI.hpp>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include <unistd.h>

int main(int argc, char** argv) {
    CLI::App app{"busd: the bus broker. Routes typed messages between processes over ZeroMQ "
                 "(ipc://) and unix:// sockets.\n\nWith no options it serves "
                 "$XDG_RUNTIME_DIR/bus/busd.zmq and busd.sock (or /tmp/bus-$UID/...)."};
    std::vector<std::string> endpoints, listen;
    std::string config_file, pid_file, log_file, keys_file, generate_keys, apps_log_dir, http;
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
    app.add_option("--http", http,
                   "serve busd's HTTP face on ADDR:PORT (loopback unless ADDR says otherwise; "
                   "port 0 picks one): /metrics, /api/v1, /events and the dashboard at /");
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
        try {
            std::printf("%s\n", bus::daemon::generate_curve_keys(generate_keys).c_str());
            return 0;
        } catch (const std::exception& e) {
            std::fprintf(stderr, "busd: %s\n", e.what());
            return 1;
        }
    }

    bus::daemon::Config config;
    try {
        endpoints.insert(endpoints.end(), listen.begin(), listen.end());
        config = bus::daemon::load_config(config_file, endpoints, keys_file);
    } catch (const bus::ConfigError& e) {
        std::fprintf(stderr, "busd: bad config: %s\n", e.what());
        return 2;
    }
    config.apps_log_dir = apps_log_dir;
    if (!http.empty())
        config.http.listen = http;
    config.log = [](const std::string& line) {
        std::fprintf(stderr, "busd: %s\n", line.c_str());
        std::fflush(stderr);
    };

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
        if (busd::detach(log_file, ready) < 0) {
            std::fprintf(stderr, "busd: cannot detach: %s\n", std::strerror(errno));
            return 1;
        }
    }

    // busd is one thread: the loop needs no locks (measured: the scheduler's mutex was ~5% of
    // busd's instructions per routed message). Except with a NATS bridge: nats.c's threads post
    // to the loop, and posting into an unlocked scheduler races with the loop (it lost the
    // loop's own work once, leaving busd in pause() for good, deaf to SIGTERM: decision 78).
    // Its I/O stays on the loop alone, so only the scheduler's lock comes back.
    boost::asio::io_context io(config.bridges.empty() ? BOOST_ASIO_CONCURRENCY_HINT_UNSAFE
                                                      : BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO);
    config.stopped_by_signal = [&io] { io.stop(); };
    std::string why;
    auto busd = bus::daemon::Daemon::start(io, std::move(config), &why);
    if (!busd) {
        std::fprintf(stderr, "busd: %s\n", why.c_str());
        return 1;
    }
    std::string list;
    for (const auto& e : busd.value()->endpoints())
        list += (list.empty() ? "" : ", ") + e;
    std::fprintf(stderr, "busd: serving %s (pid %d)\n", list.c_str(), static_cast<int>(::getpid()));
    if (const auto& url = busd.value()->http_url(); !url.empty())
        std::fprintf(stderr, "busd: http on %s\n", url.c_str());
    std::fflush(stderr);
    if (daemon)
        busd::ready_to_serve(ready, pid_file);
    io.run();
    if (daemon)
        ::unlink(pid_file.c_str());
    return 0;
}
