// FileWatch (watch.hpp): inotify, the debounce timer and the content hash.
#include "cluster/watch.hpp"

#include "core/fnv1a.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string_view>

#include <sys/inotify.h>
#include <unistd.h>

namespace bus::cluster::detail {
namespace {

// FNV-1a over every watched file's name and content (a directory: its regular files, in name
// order).
std::uint64_t content_hash(const std::vector<std::string>& paths) {
    bus::detail::Fnv1a h;
    auto mix = [&](std::string_view bytes) {
        h.add(bytes).add(0xff); // separator
    };
    auto file = [&](const std::filesystem::path& p) {
        mix(p.string());
        std::ifstream in(p, std::ios::binary);
        std::string content((std::istreambuf_iterator<char>(in)), {});
        mix(content);
    };
    for (const auto& path : paths) {
        std::error_code ec;
        if (std::filesystem::is_directory(path, ec)) {
            std::vector<std::filesystem::path> files;
            for (const auto& e : std::filesystem::directory_iterator(path, ec))
                if (e.is_regular_file(ec))
                    files.push_back(e.path());
            std::sort(files.begin(), files.end());
            for (const auto& f : files)
                file(f);
        } else {
            file(path);
        }
    }
    return h.value();
}

} // namespace

std::unique_ptr<FileWatch> FileWatch::start(boost::asio::io_context& io,
                                            std::vector<std::string> paths,
                                            std::chrono::milliseconds debounce, Log log,
                                            std::function<void()> changed) {
    const int fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) {
        log(std::string("cannot watch: ") + std::strerror(errno));
        return nullptr;
    }
    std::unique_ptr<FileWatch> w(
        new FileWatch(io, fd, std::move(paths), debounce, std::move(log), std::move(changed)));
    // Directories, not files: editors save by writing a new file and renaming it over the old
    // one, which a watch on the old file's inode would miss.
    const auto mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE |
                      IN_MODIFY | IN_ATTRIB;
    for (const auto& path : w->paths_) {
        std::error_code ec;
        const auto dir = std::filesystem::is_directory(path, ec)
                             ? std::filesystem::path(path)
                             : std::filesystem::path(path).parent_path();
        const std::string d = dir.empty() ? "." : dir.string();
        if (::inotify_add_watch(fd, d.c_str(), mask) < 0)
            w->log_("cannot watch " + d + ": " + std::strerror(errno));
    }
    w->hash_ = content_hash(w->paths_);
    w->wait();
    return w;
}

FileWatch::FileWatch(boost::asio::io_context& io, int inotify, std::vector<std::string> paths,
                     std::chrono::milliseconds debounce, Log log, std::function<void()> changed)
    : inotify_(io, inotify), debounce_timer_(io), paths_(std::move(paths)), debounce_(debounce),
      log_(std::move(log)), changed_(std::move(changed)) {}

void FileWatch::stop() {
    debounce_timer_.cancel();
    inotify_.close();
}

void FileWatch::wait() {
    inotify_.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                        [this, alive = std::weak_ptr<int>(alive_)](boost::system::error_code ec) {
                            if (ec || alive.expired())
                                return;
                            char buffer[8192];
                            while (::read(inotify_.native_handle(), buffer, sizeof buffer) > 0) {
                            }
                            // Debounced: the check runs once the events have stopped for a while.
                            debounce_timer_.expires_after(debounce_);
                            debounce_timer_.async_wait([this, alive](boost::system::error_code e) {
                                if (!e && !alive.expired())
                                    check();
                            });
                            wait();
                        });
}

void FileWatch::check() {
    const auto h = content_hash(paths_);
    if (h == hash_) {
        log_("watched files unchanged");
        return;
    }
    hash_ = h;
    log_("watched files changed");
    changed_();
}

} // namespace bus::cluster::detail
