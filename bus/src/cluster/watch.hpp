// Reload on change (AppConfig::watch): a FileWatch watches an app's files and says when their
// content has changed. inotify on the watched paths' directories, debounced, then a hash of the
// content compared with the last one, so a save without a change, or a burst of saves, makes one
// reload or none.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace bus::cluster::detail {

class FileWatch {
public:
    using Log = std::function<void(const std::string&)>;

    // Watches `paths` (files, or directories: their files, not recursively) from now on; calls
    // `changed` once events have stopped for `debounce` and the content differs from the last
    // time. Tells `log` what it finds, and returns none when inotify cannot be had.
    static std::unique_ptr<FileWatch> start(boost::asio::io_context& io,
                                            std::vector<std::string> paths,
                                            std::chrono::milliseconds debounce, Log log,
                                            std::function<void()> changed);

    // No more events or checks: what is armed completes as cancelled.
    void stop();

private:
    FileWatch(boost::asio::io_context& io, int inotify, std::vector<std::string> paths,
              std::chrono::milliseconds debounce, Log log, std::function<void()> changed);
    void wait();
    void check();

    boost::asio::posix::stream_descriptor inotify_;
    boost::asio::steady_timer debounce_timer_;
    std::vector<std::string> paths_;
    std::chrono::milliseconds debounce_;
    Log log_;
    std::function<void()> changed_;
    std::uint64_t hash_ = 0; // of the content as last seen
    // Handlers armed on the loop hold this weakly: the watch may be gone when they run.
    std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

} // namespace bus::cluster::detail
