#include "bus/unique_fd.hpp"

#include <fcntl.h>
#include <unistd.h>

namespace bus {

void UniqueFd::reset(int fd) noexcept {
    if (fd_ >= 0 && fd_ != fd)
        ::close(fd_);
    fd_ = fd;
}

UniqueFd UniqueFd::dup() const noexcept {
    return UniqueFd(::fcntl(fd_, F_DUPFD_CLOEXEC, 0));
}

} // namespace bus
