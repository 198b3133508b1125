// Running a command's io_context until what it waits for happened, or until SIGINT/SIGTERM
// (Ctrl-C ends commands cleanly).
#pragma once

#include <utility> // before Asio (Boost 1.74 misses it: DESIGN.md)

#include <boost/asio/io_context.hpp>

#include <functional>
#include <memory>

namespace bus::cli {

// Runs `io` until `done` or until SIGINT/SIGTERM; true when `done`.
bool run_until_done(boost::asio::io_context& io, const std::function<bool()>& done);
// True once SIGINT/SIGTERM arrived (Ctrl-C ends commands cleanly).
bool interrupted();
// Watches SIGINT/SIGTERM on `io` for as long as the returned handle lives (keep it beside
// `io`, declared after it, so it goes first).
[[nodiscard]] std::shared_ptr<void> watch_signals(boost::asio::io_context& io);

} // namespace bus::cli
