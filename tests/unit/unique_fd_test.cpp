#include <bus/unique_fd.hpp>

#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

namespace {

bool is_open(int fd) {
    return ::fcntl(fd, F_GETFD) >= 0;
}

TEST(UniqueFd, ClosesOnDestruction) {
    int p[2];
    ASSERT_EQ(::pipe(p), 0);
    ::close(p[1]);
    {
        bus::UniqueFd fd(p[0]);
        EXPECT_TRUE(is_open(p[0]));
    }
    EXPECT_FALSE(is_open(p[0]));
}

TEST(UniqueFd, MoveTransfersOwnershipAndReleaseGivesItUp) {
    int p[2];
    ASSERT_EQ(::pipe(p), 0);
    bus::UniqueFd a(p[0]), b(p[1]);
    bus::UniqueFd c = std::move(a);
    EXPECT_FALSE(a);
    EXPECT_EQ(c.get(), p[0]);
    c = std::move(b); // closes p[0]
    EXPECT_FALSE(is_open(p[0]));
    const int raw = c.release();
    EXPECT_FALSE(c);
    EXPECT_TRUE(is_open(raw));
    ::close(raw);
}

TEST(UniqueFd, DupIsCloseOnExec) {
    int p[2];
    ASSERT_EQ(::pipe(p), 0);
    bus::UniqueFd a(p[0]), b(p[1]);
    bus::UniqueFd d = a.dup();
    ASSERT_TRUE(d);
    EXPECT_NE(d.get(), a.get());
    EXPECT_TRUE(::fcntl(d.get(), F_GETFD) & FD_CLOEXEC);
}

} // namespace
