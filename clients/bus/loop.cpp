// The loop a command runs on, and Ctrl-C (loop.hpp).
#include "loop.hpp"

#include <boost/asio/signal_set.hpp>

#include <csignal>

namespace bus::cli {

namespace {
bool g_interrupted = false;
} // namespace

std::shared_ptr<void> watch_signals(boost::asio::io_context& io) {
    auto signals = std::make_shared<boost::asio::signal_set>(io, SIGINT, SIGTERM);
    signals->async_wait([&io](const boost::system::error_code& ec, int) {
        if (ec)
            return;
        g_interrupted = true;
        io.stop();
    });
    return signals;
}

bool interrupted() {
    return g_interrupted;
}

bool run_until_done(boost::asio::io_context& io, const std::function<bool()>& done) {
    while (!done() && !g_interrupted) {
        if (io.stopped())
            io.restart();
        io.run_one();
    }
    return done();
}

} // namespace bus::cli
