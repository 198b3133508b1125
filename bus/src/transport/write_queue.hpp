// The bytes a Channel has queued for its socket: Channel's private state, so not in a public
// header (channel.hpp holds it by pointer).
//
// Why chunks and not one string: a queue that grows towards its bound (busd's per-client
// queue of a subscriber that stopped reading is 2 MiB by default) would, as one string grown by
// doubling, hold the old copy and the new one while it grows, and keep its largest capacity
// once drained. A stalled subscriber beside a healthy one cost busd half again its resting
// memory that way (bench/RESULTS.md, "stall"). In chunks of `chunk_size`, what is resident is
// what is queued plus one chunk, and a chunk goes back to the allocator once written.
//
// Offsets are stream offsets: bytes appended to the channel since it opened, so a position
// recorded when a frame is queued (its fds, its completion) stays valid while earlier chunks
// are written and dropped.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <sys/uio.h>

namespace bus::detail {

class WriteQueue {
public:
    // Below glibc's mmap threshold, so chunks come from and return to the heap (no mmap and
    // munmap per chunk), and large enough that a socket-buffer-sized write takes a few iovecs.
    static constexpr std::size_t chunk_size = 64 * 1024;

    // Pages of a chunk are resident only once written: a channel that never queues much
    // costs its first page or so, whatever it reserved.
    WriteQueue() { chunks_.back().reserve(chunk_size + chunk_slack); }

    // The stream offset of the first byte not yet written, and just past the last queued one.
    std::uint64_t begin() const noexcept { return written_; }
    std::uint64_t end() const noexcept { return tail_base_ + chunks_.back().size(); }
    std::size_t size() const noexcept { return static_cast<std::size_t>(end() - written_); }
    bool empty() const noexcept { return end() == written_; }

    // The string to append the next frame to, whole: the last chunk, or a fresh one once the
    // last holds chunk_size bytes. A frame never spans chunks, so a chunk may exceed chunk_size
    // by one frame.
    std::string& tail() {
        std::string& last = chunks_.back();
        if (last.size() < chunk_size) [[likely]]
            return last;
        return next_chunk();
    }

    // Drops the bytes from stream offset `to` on; they must all be in the last chunk (the
    // frame that was just appended there).
    void truncate(std::uint64_t to) {
        if (to >= tail_base_)
            chunks_.back().resize(static_cast<std::size_t>(to - tail_base_));
    }

    // Describes up to `max_bytes` bytes from begin() in at most `max_iov` iovecs; returns how
    // many it filled.
    int gather(iovec* iov, int max_iov, std::size_t max_bytes) const {
        int n = 0;
        std::size_t offset = front_offset_;
        for (std::size_t i = first_; i < chunks_.size() && n < max_iov && max_bytes > 0;
             ++i, offset = 0) {
            const std::size_t len = std::min(chunks_[i].size() - offset, max_bytes);
            if (len == 0)
                continue;
            iov[n++] = {const_cast<char*>(chunks_[i].data()) + offset, len};
            max_bytes -= len;
        }
        return n;
    }

    // The first `n` bytes from begin() were written: drops the chunks they finish. The last
    // chunk stays in place once written, emptied, so a queue that drains on every flush (the
    // common case) never allocates.
    void consume(std::size_t n) {
        written_ += n;
        front_offset_ += n;
        while (first_ + 1 < chunks_.size() && front_offset_ >= chunks_[first_].size()) {
            front_offset_ -= chunks_[first_].size();
            std::string().swap(chunks_[first_]);
            ++first_;
        }
        if (first_ > 0 && first_ * 2 >= chunks_.size()) {
            // The husks of written chunks go once they are half the vector: O(1) amortized.
            chunks_.erase(chunks_.begin(), chunks_.begin() + static_cast<long>(first_));
            first_ = 0;
        }
        if (first_ + 1 == chunks_.size() && front_offset_ == chunks_.back().size()) [[likely]] {
            auto& last = chunks_.back();
            if (last.capacity() > chunk_size + chunk_slack) {
                std::string fresh; // grown by a large frame: give it back
                fresh.reserve(chunk_size + chunk_slack);
                last.swap(fresh);
            } else {
                last.clear();
            }
            front_offset_ = 0;
            tail_base_ = written_;
        }
    }

    // Bytes allocated for the queue: what it keeps resident at most.
    std::size_t reserved() const noexcept {
        std::size_t total = 0;
        for (std::size_t i = first_; i < chunks_.size(); ++i)
            total += chunks_[i].capacity();
        return total;
    }

    // Drops every byte not yet written (the channel closed).
    void clear() {
        chunks_.resize(1);
        first_ = 0;
        std::string().swap(chunks_.front());
        front_offset_ = 0;
        tail_base_ = written_;
    }

private:
    // Room past chunk_size in a chunk, so a frame of up to this much that crosses chunk_size
    // does not reallocate it (a larger one does, once).
    static constexpr std::size_t chunk_slack = 1024;

    [[gnu::noinline]] std::string& next_chunk() {
        tail_base_ = end();
        chunks_.emplace_back().reserve(chunk_size + chunk_slack);
        return chunks_.back();
    }

    // chunks_[first_] is the oldest chunk not yet written; the last is where frames go.
    std::vector<std::string> chunks_ = std::vector<std::string>(1);
    std::size_t first_ = 0;
    std::size_t front_offset_ = 0; // first unwritten byte in chunks_[first_]
    std::uint64_t written_ = 0;    // stream offset of that byte
    std::uint64_t tail_base_ = 0;  // stream offset of chunks_.back()'s first byte
};

} // namespace bus::detail
