// Finding queues from outside: what `bus shm ls` and `bus shm rm` call. Everything here reads
// the segments without attaching to them (read-only mappings, F_OFD_GETLK), so looking at a
// queue never changes it, and never counts as holding it.
#include "bus/shm_queue.hpp"

#include "shm/layout.hpp"
#include "shm/segment.hpp"

#include "bus/unique_fd.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace bus::shm {

using namespace detail;

namespace {

QueueInfo describe(int fd, std::string_view name) {
    QueueInfo info;
    info.name = std::string(name);
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        info.error = last_error();
        return info;
    }
    info.uid = st.st_uid;
    info.permissions = st.st_mode & 07777;
    info.in_use = held_by_other(fd, lock_holder);
    const auto size = static_cast<std::uint64_t>(st.st_size);
    if (!segment_ready(fd, size)) {
        info.error = errc::layout_mismatch;
        return info;
    }
    auto view = map_read_only(fd, control_size());
    if (!view) {
        info.error = view.error();
        return info;
    }
    const auto& c = *reinterpret_cast<const Control*>(view.value().data());
    Identity id;
    std::memcpy(&id, &c.id, sizeof id);
    if (auto ec = check_layout(id, size)) {
        info.error = ec;
        return info;
    }
    info.mode = static_cast<Mode>(id.mode);
    info.owner_pid = id.creator_pid;
    info.owner_alive =
        id.creator_start_time != 0 && process_start_time(id.creator_pid) == id.creator_start_time;

    info.stats = read_stats(c);

    // Attached slots whose lock someone holds: live handles (a slot of a dead one is unlocked).
    for (std::size_t i = 0; i < max_peers; ++i) {
        const PeerSlot& p = c.slots[i];
        if (p.state.load(std::memory_order_acquire) !=
                static_cast<std::uint32_t>(SlotState::attached) ||
            !held_by_other(fd, lock_slot(i)))
            continue;
        const pid_t pid = p.pid.load(std::memory_order_relaxed);
        if (p.role.load(std::memory_order_relaxed) == static_cast<std::uint32_t>(Role::producer)) {
            ++info.producers;
            info.producer_pids.push_back(pid);
        } else {
            info.consumer = true;
            info.consumer_pid = pid;
        }
    }
    return info;
}

// `parts` joined by `separator`.
std::string join(const std::vector<std::string>& parts, std::string_view separator) {
    std::string text;
    for (const auto& part : parts) {
        if (!text.empty())
            text.append(separator);
        text.append(part);
    }
    return text;
}

// " (consumer: pid 4242; producers: pids 4240, 4241; created by pid 4240)": who holds the
// queue, as its segment says now.
std::string holders(std::string_view name) {
    auto found = inspect(name);
    const std::error_code unreadable = found ? found.value().error : found.error();
    if (unreadable)
        return " (its segment cannot be read: " + unreadable.message() + ")";
    const QueueInfo& q = found.value();
    std::vector<std::string> parts;
    if (q.consumer)
        parts.push_back("consumer: pid " + std::to_string(q.consumer_pid));
    if (!q.producer_pids.empty()) {
        std::vector<std::string> pids;
        for (pid_t pid : q.producer_pids)
            pids.push_back(std::to_string(pid));
        parts.push_back((pids.size() == 1 ? "producer: pid " : "producers: pids ") +
                        join(pids, ", "));
    }
    parts.push_back("created by pid " + std::to_string(q.owner_pid) +
                    (q.owner_alive ? "" : ", which has exited"));
    return " (" + join(parts, "; ") + ")";
}

} // namespace

Result<QueueInfo> inspect(std::string_view name) {
    auto shm = segment_name(name);
    if (!shm)
        return shm.error();
    UniqueFd fd(::shm_open(shm.value().c_str(), O_RDONLY | O_CLOEXEC, 0));
    if (!fd)
        return last_error();
    return describe(fd.get(), name);
}

bool valid_name(std::string_view name) noexcept {
    try {
        return static_cast<bool>(segment_name(name));
    } catch (...) {
        return false; // out of memory for the name: not one to keep either
    }
}

Result<std::vector<QueueInfo>> list() {
    DIR* dir = ::opendir(shm_directory);
    if (!dir)
        return last_error();
    std::vector<QueueInfo> queues;
    while (const dirent* entry = ::readdir(dir)) {
        const std::string_view file = entry->d_name;
        if (!file.starts_with(name_prefix))
            continue;
        const std::string_view name = file.substr(name_prefix.size());
        if (!segment_name(name))
            continue;
        auto info = inspect(name);
        if (info)
            queues.push_back(std::move(info).value());
        else if (info.error() != std::errc::no_such_file_or_directory) { // else removed meanwhile
            QueueInfo unreadable;
            unreadable.name = std::string(name);
            unreadable.error = info.error();
            queues.push_back(std::move(unreadable));
        }
    }
    ::closedir(dir);
    std::sort(queues.begin(), queues.end(),
              [](const QueueInfo& a, const QueueInfo& b) { return a.name < b.name; });
    return queues;
}

std::string describe_error(std::string_view name, std::error_code ec) {
    // Appended piece by piece: GCC 12's -Wrestrict misreads chains of `"..." + std::string`.
    std::string text;
    if (!valid_name(name)) {
        text.append("'").append(name).append("' is not a queue name ([A-Za-z0-9._-], 1 to ");
        return text.append(std::to_string(max_name)).append(" characters)");
    }
    const std::string queue = std::string("queue '").append(name).append("'");
    if (ec == std::errc::no_such_file_or_directory)
        return text.append(queue)
            .append(": no such queue (no ")
            .append(shm_directory)
            .append("/")
            .append(name_prefix)
            .append(name)
            .append(")");
    if (ec == std::errc::file_exists || ec == errc::queue_in_use)
        return queue + ": " + ec.message() + holders(name);
    return queue + ": " + ec.message();
}

std::error_code remove(std::string_view name, bool force) {
    auto shm = segment_name(name);
    if (!shm)
        return shm.error();
    UniqueFd fd;
    if (!force) {
        // Held while we unlink, so nobody attaches in between.
        fd.reset(::shm_open(shm.value().c_str(), O_RDWR | O_CLOEXEC, 0));
        if (!fd)
            return last_error();
        auto ec = lock_byte(fd.get(), lock_holder, F_WRLCK, false);
        if (ec == std::errc::resource_unavailable_try_again)
            return errc::queue_in_use;
        if (ec)
            return ec;
    }
    if (::shm_unlink(shm.value().c_str()) != 0)
        return last_error();
    return {};
}

} // namespace bus::shm
