// UniqueFd: the one owner of a file descriptor. Move-only, closes exactly once, and
// release() hands the descriptor on. Received descriptors are always UniqueFd; descriptors
// a caller lends us for sending are plain ints (borrowed), as in folly's SocketFds.
#pragma once

#include <utility>

namespace bus {

class UniqueFd {
public:
    UniqueFd() noexcept = default;
    explicit UniqueFd(int fd) noexcept : fd_(fd) {}
    UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
    UniqueFd& operator=(UniqueFd&& other) noexcept {
        reset(other.release());
        return *this;
    }
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    ~UniqueFd() { reset(); }

    int get() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return fd_ >= 0; }

    // Gives up ownership without closing.
    [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }

    // Closes the held descriptor (if any) and takes `fd`. EINTR from close() is not retried:
    // on Linux the descriptor is gone either way.
    void reset(int fd = -1) noexcept;

    // A new close-on-exec descriptor for the same open file; empty with errno set on failure.
    UniqueFd dup() const noexcept;

private:
    int fd_ = -1;
};

} // namespace bus
