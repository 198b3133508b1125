// The bytes a Channel has queued for its socket. Not API: Channel's private state.
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
#include <deque>
#include <string>

#include <sys/uio.h>

namespace bus::detail {

class WriteQueue {
public:
    // Below glibc's mmap threshold, so chunks come from and return to the heap (no mmap and
    // munmap per chunk), and large enough that a socket-buffer-sized write takes a few iovecs.
    static constexpr std::size_t chunk_size = 64 * 1024;

    // The stream offset of the first byte not yet written, and just past the last queued one.
    std::uint64_t begin() const noexcept { return written_; }
    std::uint64_t end() const noexcept { return tail_base_ + (chunks_.empty() ? 0 : tail_size()); }
    std::size_t size() const noexcept { return static_cast<std::size_t>(end() - written_); }
    bool empty() const noexcept { return end() == written_; }

    // The string to append the next frame to, whole: the last chunk, or a fresh one once the
    // last holds chunk_size bytes. A frame never spans chunks, so a chunk may exceed chunk_size
    // by one frame.
    std::string& tail() {
        if (chunks_.empty() || tail_size() >= chunk_size) {
            tail_base_ = end();
            chunks_.emplace_back(std::move(spare_));
            spare_ = {};
            chunks_.back().clear();
            if (chunks_.size() > 1)
                chunks_.back().reserve(chunk_size + chunk_slack);
        }
        return chunks_.back();
    }

    // Drops the bytes from stream offset `to` on; they must all be in the last chunk (the
    // frame that was just appended there).
    void truncate(std::uint64_t to) {
        if (!chunks_.empty() && to >= tail_base_)
            chunks_.back().resize(static_cast<std::size_t>(to - tail_base_));
    }

    // Describes up to `max_bytes` bytes from begin() in at most `max_iov` iovecs; returns how
    // many it filled.
    int gather(iovec* iov, int max_iov, std::size_t max_bytes) const {
        int n = 0;
        std::size_t offset = front_offset_;
        for (auto it = chunks_.begin(); it != chunks_.end() && n < max_iov && max_bytes > 0;
             ++it, offset = 0) {
            const std::size_t len = std::min(it->size() - offset, max_bytes);
            if (len == 0)
                continue;
            iov[n++] = {const_cast<char*>(it->data()) + offset, len};
            max_bytes -= len;
        }
        return n;
    }

    // The first `n` bytes from begin() were written: drops the chunks they finish.
    void consume(std::size_t n) {
        written_ += n;
        front_offset_ += n;
        while (!chunks_.empty() && front_offset_ >= chunks_.front().size() &&
               (chunks_.size() > 1 || front_offset_ > 0)) {
            front_offset_ -= chunks_.front().size();
            recycle(std::move(chunks_.front()));
            chunks_.pop_front();
        }
        if (chunks_.empty())
            tail_base_ = written_;
    }

    // Bytes allocated for the queue, the spare chunk included: what it keeps resident at most.
    std::size_t reserved() const noexcept {
        std::size_t total = spare_.capacity();
        for (const auto& chunk : chunks_)
            total += chunk.capacity();
        return total;
    }

    // Drops every byte not yet written (the channel closed).
    void clear() {
        chunks_.clear();
        spare_ = {};
        front_offset_ = 0;
        tail_base_ = written_;
    }

private:
    // Room past chunk_size in a fresh chunk, so the small frame that crosses chunk_size does
    // not reallocate it.
    static constexpr std::size_t chunk_slack = 4 * 1024;

    std::size_t tail_size() const noexcept { return chunks_.back().size(); }

    // One written chunk is kept for the next tail(), so a steady flow does not allocate; one
    // grown past a chunk by a large frame is given back.
    void recycle(std::string&& chunk) {
        if (chunk.capacity() <= chunk_size + chunk_slack && chunk.capacity() > spare_.capacity())
            spare_ = std::move(chunk);
    }

    std::deque<std::string> chunks_;
    std::string spare_;
    std::size_t front_offset_ = 0; // first unwritten byte in chunks_.front()
    std::uint64_t written_ = 0;    // stream offset of that byte
    std::uint64_t tail_base_ = 0;  // stream offset of chunks_.back()'s first byte
};

} // namespace bus::detail
