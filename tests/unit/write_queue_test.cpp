// The Channel's write queue: stream offsets that survive written chunks, gathers that stop
// where they are told (an fd batch starts the next sendmsg), and memory that follows what is
// queued rather than the largest the queue ever was.
#include "transport/write_queue.hpp"

#include <gtest/gtest.h>

#include <string>

namespace {

using bus::detail::WriteQueue;

// What gather() describes, as one string.
std::string gathered(const WriteQueue& q, std::size_t max_bytes, int max_iov = 16) {
    iovec iov[16] = {};
    const int n = q.gather(iov, max_iov, max_bytes);
    std::string out;
    for (int i = 0; i < n; ++i)
        out.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
    return out;
}

// Appends `count` frames of `size` bytes, each filled with a letter from its index.
std::string fill(WriteQueue& q, int count, std::size_t size) {
    std::string all;
    for (int i = 0; i < count; ++i) {
        const std::string frame(size, static_cast<char>('a' + i % 26));
        q.tail() += frame;
        all += frame;
    }
    return all;
}

TEST(WriteQueue, OffsetsCountTheStreamAcrossWrittenChunks) {
    WriteQueue q;
    EXPECT_TRUE(q.empty());
    const std::string all = fill(q, 3000, 100); // about 300 KiB: several chunks
    EXPECT_EQ(q.begin(), 0u);
    EXPECT_EQ(q.end(), all.size());
    std::string written;
    while (!q.empty()) {
        const std::string part = gathered(q, 50'000);
        ASSERT_FALSE(part.empty());
        ASSERT_LE(part.size(), 50'000u);
        written += part;
        q.consume(part.size());
        EXPECT_EQ(q.begin(), written.size());
        EXPECT_EQ(q.end(), all.size());
    }
    EXPECT_EQ(written, all);
    // Appending after everything was written continues the stream.
    q.tail() += "next";
    EXPECT_EQ(q.begin(), all.size());
    EXPECT_EQ(q.end(), all.size() + 4);
    EXPECT_EQ(gathered(q, 100), "next");
}

TEST(WriteQueue, AFrameNeverSpansChunksAndGatherStopsAtItsLimit) {
    WriteQueue q;
    const std::string all = fill(q, 40, 3000); // frames of 3000 bytes over 64 KiB chunks
    // Up to an exact frame boundary, wherever the chunks split: what an fd batch asks for.
    for (std::size_t limit : {3000u, 66'000u, 69'000u}) {
        const std::string part = gathered(q, limit);
        EXPECT_EQ(part, all.substr(0, limit)) << limit;
    }
    // A partial write leaves the rest, in order.
    q.consume(1234);
    EXPECT_EQ(gathered(q, all.size()), all.substr(1234));
    // One iovec describes at most one chunk: the first holds frames until it reaches
    // chunk_size (22 frames of 3000 bytes for 64 KiB).
    const std::size_t first_chunk = (WriteQueue::chunk_size + 2999) / 3000 * 3000;
    EXPECT_EQ(gathered(q, all.size(), 1).size(), first_chunk - 1234);
}

TEST(WriteQueue, TruncateDropsOnlyTheFrameJustAppended) {
    WriteQueue q;
    const std::string all = fill(q, 30, 3000);
    const std::uint64_t start = q.end();
    q.tail() += std::string(500, 'z');
    q.truncate(start);
    EXPECT_EQ(q.end(), start);
    EXPECT_EQ(gathered(q, all.size() + 500), all);
}

TEST(WriteQueue, MemoryFollowsWhatIsQueued) {
    WriteQueue q;
    constexpr std::size_t bound = 2u << 20; // busd's default per-client queue
    fill(q, static_cast<int>(bound / 64), 64);
    ASSERT_EQ(q.size(), bound);
    // Never the old and new copies of a doubling buffer: the chunks, and the slack of each.
    EXPECT_LE(q.reserved(), bound + bound / 32 + WriteQueue::chunk_size);
    while (!q.empty())
        q.consume(gathered(q, 200'000).size());
    // Drained: the last chunk kept for what comes next.
    EXPECT_LE(q.reserved(), WriteQueue::chunk_size + 1024);
    // A frame larger than a chunk is given back once written.
    q.tail() += std::string(1u << 20, 'L');
    q.consume(gathered(q, 2u << 20).size());
    EXPECT_TRUE(q.empty());
    EXPECT_LE(q.reserved(), WriteQueue::chunk_size + 1024);
}

TEST(WriteQueue, ClearDropsWhatIsUnwrittenAndKeepsTheOffset) {
    WriteQueue q;
    fill(q, 100, 1000);
    q.consume(5000);
    q.clear();
    EXPECT_TRUE(q.empty());
    EXPECT_EQ(q.begin(), 5000u);
    EXPECT_EQ(q.end(), 5000u);
    EXPECT_LT(q.reserved(), 64u); // no chunk; a string's own inline buffer at most
}

} // namespace
