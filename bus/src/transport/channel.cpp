#include "bus/channel.hpp"

#include "transport/write_queue.hpp"

#include <boost/asio/post.hpp>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/dynamic_message.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

namespace bus {

namespace asio = boost::asio;

namespace {

// While a channel delivers a read, the other channels its handlers send on (a router's
// forwards) are listed here rather than flushed from a posted handler: the delivering channel
// flushes them when its delivery ends, without another turn of the loop. One list per thread,
// since a loop runs handlers on the thread that runs it.
thread_local std::vector<std::weak_ptr<Channel>>* deferred_flushes = nullptr;

// The kernel's SCM_MAX_FD: the most descriptors one sendmsg/recvmsg can carry.
constexpr std::size_t max_fds_per_syscall = 253;
// Reads per wake-up before yielding to other handlers on the loop.
constexpr int max_reads_per_wakeup = 16;
// Fds received ahead of the frames that claim them. They can only run ahead by one read's
// worth (one sendmsg's fds); the bound stops a peer from parking descriptors here.
constexpr std::size_t max_received_fds = 2 * max_fds_per_syscall;

// Queue chunks one sendmsg takes at most: more than a socket buffer holds.
constexpr int max_iov_per_write = 16;

} // namespace

// --- construction ---------------------------------------------------------------------------

Channel::Channel(asio::io_context& io, int fd, ChannelOptions options)
    : socket_(io, fd), options_(options), out_(std::make_unique<detail::WriteQueue>()),
      frames_(options.max_message_size), lines_(options.max_message_size) {}

// Dropping the last reference is a disconnect(): the socket closes, and sends still queued fail
// with errc::channel_closed. Only close() keeps the channel alive until its queue is flushed.
Channel::~Channel() {
    if (state_ == State::closed)
        return;
    std::vector<SendHandler> failed;
    for (auto& c : completions_)
        failed.push_back(std::move(c.handler));
    if (unacked_ && unacked_->handler)
        failed.push_back(std::move(unacked_->handler));
    for (auto& h : held_)
        if (h.handler)
            failed.push_back(std::move(h.handler));
    if (!failed.empty())
        asio::post(socket_.get_executor(), [failed = std::move(failed)] {
            for (auto& handler : failed)
                handler(errc::channel_closed);
        });
}

Result<std::shared_ptr<Channel>> Channel::adopt(asio::io_context& io, UniqueFd socket,
                                                ChannelOptions options) {
    if (!socket)
        return std::make_error_code(std::errc::bad_file_descriptor);
    if (options.max_fds_per_message > max_fds_per_syscall)
        options.max_fds_per_message = max_fds_per_syscall;
    int type = 0;
    socklen_t len = sizeof type;
    if (::getsockopt(socket.get(), SOL_SOCKET, SO_TYPE, &type, &len) < 0)
        return last_error();
    if (type != SOCK_STREAM)
        return std::make_error_code(std::errc::not_supported);
    const int flags = ::fcntl(socket.get(), F_GETFL);
    if (flags < 0 || ::fcntl(socket.get(), F_SETFL, flags | O_NONBLOCK) < 0)
        return last_error();
    std::shared_ptr<Channel> channel(new Channel(io, socket.release(), options));
    // Reading starts on the loop, so handlers set right after adopt() see every message.
    asio::post(io, [weak = channel->weak_from_this()] {
        if (auto self = weak.lock(); self && self->state_ != State::closed)
            self->start_read();
    });
    return channel;
}

Result<std::pair<std::shared_ptr<Channel>, std::shared_ptr<Channel>>>
Channel::pair(asio::io_context& io, ChannelOptions options) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return last_error();
    UniqueFd a(sv[0]), b(sv[1]);
    auto first = adopt(io, std::move(a), options);
    if (!first)
        return first.error();
    auto second = adopt(io, std::move(b), options);
    if (!second)
        return second.error();
    return std::pair{std::move(first).value(), std::move(second).value()};
}

Result<std::shared_ptr<Channel>> Channel::from_parent(asio::io_context& io,
                                                      ChannelOptions options) {
    const char* variable = "BUS_CHANNEL_FD";
    const char* value = std::getenv(variable);
    if (value) {
        options.serialization = Serialization::bus;
    } else if ((value = std::getenv(variable = "NODE_CHANNEL_FD"))) {
        const char* mode = std::getenv("NODE_CHANNEL_SERIALIZATION_MODE");
        if (mode && std::string_view(mode) != "json")
            return errc::unsupported_serialization;
        options.serialization = Serialization::node_json;
    } else {
        return errc::no_parent_channel;
    }
    ::unsetenv("NODE_CHANNEL_SERIALIZATION_MODE");
    return from_environment(io, variable, options);
}

Result<std::shared_ptr<Channel>>
Channel::from_environment(asio::io_context& io, const char* variable, ChannelOptions options) {
    const char* value = std::getenv(variable);
    if (!value)
        return errc::no_parent_channel;
    char* end = nullptr;
    errno = 0;
    const long fd = std::strtol(value, &end, 10);
    const bool valid = errno == 0 && end != value && *end == '\0' && fd >= 0 && fd < (1 << 20);
    ::unsetenv(variable);
    if (!valid)
        return std::make_error_code(std::errc::bad_file_descriptor);
    if (::fcntl(static_cast<int>(fd), F_SETFD, FD_CLOEXEC) < 0)
        return last_error();
    return adopt(io, UniqueFd(static_cast<int>(fd)), options);
}

// --- sending --------------------------------------------------------------------------------

std::size_t Channel::queued_bytes() const noexcept {
    return out_->size() + held_bytes_ + (unacked_ ? unacked_->line.size() : 0);
}

bool Channel::send(const google::protobuf::Message& message, Fds fds, SendHandler done) {
    if (options_.serialization == Serialization::node_json)
        return node_send(node_line(message), std::move(fds), std::move(done));
    if (state_ != State::open)
        return enqueue(out_->end(), std::move(fds), std::move(done));
    const std::uint64_t start = out_->end();
    frame::append_message(out_->tail(), message, static_cast<std::uint32_t>(fds.size()));
    return enqueue(start, std::move(fds), std::move(done));
}

bool Channel::send(const v1::Envelope& envelope, Fds fds, SendHandler done) {
    if (options_.serialization == Serialization::node_json) {
        // A Node peer sees the payload only: JSON as it is, a protobuf payload through its
        // JSON mapping when the type is linked into this program.
        const auto& url = envelope.type_url();
        if (url.empty() || url == json_type_url)
            return node_send(node_line(envelope.payload()), std::move(fds), std::move(done));
        const auto* pool = google::protobuf::DescriptorPool::generated_pool();
        const auto* type =
            url.starts_with(frame::type_url_prefix)
                ? pool->FindMessageTypeByName(url.substr(frame::type_url_prefix.size()))
                : nullptr;
        if (!type)
            throw std::invalid_argument("bus::Channel: cannot send type '" + url +
                                        "' to a Node peer: its descriptor is not linked in");
        google::protobuf::DynamicMessageFactory factory(pool);
        std::unique_ptr<google::protobuf::Message> decoded(factory.GetPrototype(type)->New());
        if (!decoded->ParseFromString(envelope.payload()))
            throw std::invalid_argument("bus::Channel: payload does not parse as " + url);
        return node_send(node_line(*decoded), std::move(fds), std::move(done));
    }
    if (fds.size() != envelope.fd_count()) {
        v1::Envelope copy = envelope;
        copy.set_fd_count(static_cast<std::uint32_t>(fds.size()));
        return send(copy, std::move(fds), std::move(done));
    }
    const std::uint64_t start = out_->end();
    if (state_ == State::open)
        frame::append(out_->tail(), envelope);
    return enqueue(start, std::move(fds), std::move(done));
}

bool Channel::send_bytes(std::string_view payload, Fds fds, SendHandler done) {
    if (options_.serialization == Serialization::node_json)
        return node_send(node_line(payload), std::move(fds), std::move(done));
    const std::uint64_t start = out_->end();
    if (state_ == State::open)
        frame::append_bytes(out_->tail(), payload, static_cast<std::uint32_t>(fds.size()));
    return enqueue(start, std::move(fds), std::move(done));
}

bool Channel::send_split(const v1::Envelope& header, std::string_view payload, Fds fds,
                         SendHandler done) {
    if (options_.serialization == Serialization::node_json)
        throw std::invalid_argument("bus::Channel: send_split needs bus serialization");
    const std::uint64_t start = out_->end();
    if (state_ == State::open) {
        if (header.fd_count() != fds.size()) {
            v1::Envelope copy = header;
            copy.set_fd_count(static_cast<std::uint32_t>(fds.size()));
            frame::append_split(out_->tail(), copy, payload);
        } else {
            frame::append_split(out_->tail(), header, payload);
        }
    }
    return enqueue(start, std::move(fds), std::move(done));
}

bool Channel::send_split(std::string_view header, std::string_view payload, Fds fds,
                         SendHandler done) {
    if (options_.serialization == Serialization::node_json)
        throw std::invalid_argument("bus::Channel: send_split needs bus serialization");
    const std::uint64_t start = out_->end();
    if (state_ == State::open)
        frame::append_split(out_->tail(), header, payload);
    return enqueue(start, std::move(fds), std::move(done));
}

// The frame that starts at stream offset frame_start has been appended (unless the channel is
// closed).
bool Channel::enqueue(std::uint64_t frame_start, Fds fds, SendHandler done) {
    if (fds.size() > options_.max_fds_per_message) {
        out_->truncate(frame_start);
        throw std::invalid_argument("bus::Channel: " + std::to_string(fds.size()) +
                                    " fds in one message, over the limit of " +
                                    std::to_string(options_.max_fds_per_message));
    }
    if (state_ != State::open) {
        if (done)
            asio::post(socket_.get_executor(),
                       [done = std::move(done)] { done(errc::channel_closed); });
        return false;
    }
    if (done)
        completions_.push_back({out_->end(), std::move(done)});
    if (!fds.empty()) {
        queued_fds_ += fds.size();
        fd_batches_.push_back({frame_start, std::move(fds.owned_), fds.borrowed_});
        if (!fds.borrowed_.empty()) {
            // Borrowed fds are only valid during this call: write now (their frame starts a
            // sendmsg of its own anyway), and dup them only if the socket cannot take them.
            if (!waiting_writable_) {
                if (auto ec = write_some()) {
                    fail(ec);
                    return false;
                }
                if (!out_->empty())
                    wait_writable(); // full: later sends queue without retrying sendmsg
            }
            // Only the batch just added can hold borrowed fds; if it is still queued, it
            // needs copies that outlive this call.
            if (!fd_batches_.empty() && !fd_batches_.back().borrowed.empty()) {
                auto& batch = fd_batches_.back();
                for (int fd : batch.borrowed) {
                    UniqueFd copy(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
                    if (!copy) {
                        fail(last_error());
                        return false;
                    }
                    batch.owned.push_back(std::move(copy));
                }
                batch.borrowed = {};
            }
        }
    }
    schedule_flush();
    return !over_high_water();
}

bool Channel::over_high_water() {
    if (queued_bytes() >= options_.high_water_mark || queued_fds_ >= options_.high_water_fds)
        above_hwm_ = true;
    return above_hwm_;
}

void Channel::schedule_flush() {
    if (waiting_writable_)
        return;
    if (delivering_) {
        // on_readable() flushes right after the messages of this read are delivered: a reply
        // leaves without another trip through the loop, and all replies to one read share a
        // sendmsg.
        flush_after_delivery_ = true;
        return;
    }
    if (flush_scheduled_)
        return;
    flush_scheduled_ = true;
    if (deferred_flushes) {
        deferred_flushes->push_back(weak_from_this());
        return;
    }
    asio::post(socket_.get_executor(), [weak = weak_from_this()] {
        if (auto self = weak.lock()) {
            self->flush_scheduled_ = false;
            self->flush();
        }
    });
}

// Writes until done or EAGAIN. Never calls user code.
std::error_code Channel::write_some() {
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_fds_per_syscall)];
    iovec iov[max_iov_per_write];
    while (!out_->empty()) {
        const std::uint64_t written = out_->begin();
        std::size_t len = out_->size();
        msghdr msg{};
        FdBatch* batch = nullptr;
        if (!fd_batches_.empty()) {
            auto& front = fd_batches_.front();
            if (front.position == written) {
                batch = &front;
                // This frame's fds ride this sendmsg; the next fd-carrying frame starts the
                // next one.
                if (fd_batches_.size() > 1)
                    len = std::min<std::size_t>(len, fd_batches_[1].position - written);
                const std::size_t n = front.owned.size() + front.borrowed.size();
                msg.msg_control = control;
                msg.msg_controllen = CMSG_SPACE(sizeof(int) * n);
                cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
                cmsg->cmsg_level = SOL_SOCKET;
                cmsg->cmsg_type = SCM_RIGHTS;
                cmsg->cmsg_len = CMSG_LEN(sizeof(int) * n);
                int* out = reinterpret_cast<int*>(CMSG_DATA(cmsg));
                for (const auto& fd : front.owned)
                    *out++ = fd.get();
                for (int fd : front.borrowed)
                    *out++ = fd;
            } else {
                len = std::min<std::size_t>(len, front.position - written);
            }
        }
        msg.msg_iov = iov;
        msg.msg_iovlen = static_cast<std::size_t>(out_->gather(iov, max_iov_per_write, len));
        const ssize_t n = ::sendmsg(socket_.native_handle(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return {};
            return last_error();
        }
        if (batch) {
            queued_fds_ -= batch->owned.size() + batch->borrowed.size();
            fd_batches_.pop_front(); // the kernel holds its own references now
        }
        out_->consume(static_cast<std::size_t>(n));
    }
    return {};
}

void Channel::flush() {
    if (state_ == State::closed)
        return;
    auto guard = shared_from_this(); // a completion handler may drop the last reference
    if (auto ec = write_some())
        return fail(ec);
    while (!completions_.empty() && completions_.front().end <= out_->begin()) {
        auto handler = std::move(completions_.front().handler);
        completions_.pop_front();
        handler({});
        if (state_ == State::closed)
            return;
    }
    if (!out_->empty())
        return wait_writable();
    if (above_hwm_ && queued_bytes() < options_.high_water_mark &&
        queued_fds_ < options_.high_water_fds) {
        above_hwm_ = false;
        if (on_drain_ && state_ == State::open)
            on_drain_(); // may send more, or close(): checked below
    }
    // Finish a close() only once everything it promised to deliver is written.
    if (state_ == State::closing && out_->empty() && !unacked_ && held_.empty())
        finish({});
}

std::error_code Channel::write_queued(std::chrono::steady_clock::time_point deadline) {
    while (state_ != State::closed && !out_->empty()) {
        if (auto ec = write_some()) {
            fail(ec);
            return ec;
        }
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (out_->empty())
            break;
        if (left.count() <= 0)
            return errc::timeout;
        pollfd writable{socket_.native_handle(), POLLOUT, 0};
        if (::poll(&writable, 1, static_cast<int>(left.count())) < 0 && errno != EINTR)
            return last_error();
    }
    return {};
}

void Channel::wait_writable() {
    if (waiting_writable_)
        return;
    waiting_writable_ = true;
    socket_.async_wait(asio::posix::stream_descriptor::wait_write,
                       [weak = weak_from_this()](boost::system::error_code ec) {
                           auto self = weak.lock();
                           if (!self)
                               return;
                           self->waiting_writable_ = false;
                           if (!ec)
                               self->flush();
                       });
}

// --- receiving ------------------------------------------------------------------------------

void Channel::start_read() {
    socket_.async_wait(asio::posix::stream_descriptor::wait_read,
                       [weak = weak_from_this()](boost::system::error_code ec) {
                           auto self = weak.lock();
                           if (self && !ec)
                               self->on_readable();
                       });
}

void Channel::on_readable() {
    auto guard = shared_from_this(); // a handler may drop the last reference
    const bool node = options_.serialization == Serialization::node_json;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_fds_per_syscall)];
    for (int reads = 0; reads < max_reads_per_wakeup; ++reads) {
        // A closing channel keeps reading (and discarding) so that a peer blocked on writing
        // to us can drain what we still flush to it, and so Node acks still arrive.
        if (state_ == State::closed)
            return;
        const auto space = node ? lines_.prepare() : frames_.prepare();
        iovec iov{space.data(), space.size()};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        const ssize_t n = ::recvmsg(socket_.native_handle(), &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return start_read(); // drained: wait for the next edge
            return fail(last_error());
        }
        // Take ownership of every fd that arrived before looking at anything else, so each
        // error path below closes them.
        for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            const auto* data = CMSG_DATA(c);
            for (std::size_t i = 0; i < count; ++i) {
                int fd;
                std::memcpy(&fd, data + i * sizeof(int), sizeof fd);
                received_fds_.emplace_back(fd);
            }
        }
        if (msg.msg_flags & MSG_CTRUNC)
            return fail(errc::control_truncated);
        if (received_fds_.size() > max_received_fds)
            return fail(errc::too_many_fds);
        if (n == 0) {
            if (node ? lines_.mid_frame() : frames_.mid_frame())
                return fail(errc::truncated_frame);
            if (!received_fds_.empty())
                return fail(errc::unexpected_fds);
            return finish({});
        }
        if (node) {
            lines_.commit(static_cast<std::size_t>(n));
        } else {
            frames_.commit(static_cast<std::size_t>(n));
        }
        std::vector<std::weak_ptr<Channel>> others;
        auto* const outer = std::exchange(deferred_flushes, &others);
        delivering_ = true;
        const auto ec =
            node ? drain(lines_, &Channel::deliver_node) : drain(frames_, &Channel::deliver_frame);
        delivering_ = false;
        deferred_flushes = outer;
        // What the handlers sent, here and on other channels, leaves now, one sendmsg per
        // channel, without a turn of the loop.
        for (const auto& weak : others) {
            if (auto other = weak.lock()) {
                other->flush_scheduled_ = false;
                other->flush();
            }
        }
        if (ec)
            return fail(ec);
        if (state_ == State::closed)
            return;
        if (flush_after_delivery_) {
            flush_after_delivery_ = false;
            flush();
            if (state_ == State::closed)
                return;
        }
        // Every frame that began in this read has claimed its fds; any left have no frame.
        if (!received_fds_.empty() && !(node ? lines_.mid_frame() : frames_.mid_frame()))
            return fail(errc::unexpected_fds);
        // A short read without fds emptied the socket (the kernel ends a stream read early only
        // after an skb that carried fds), and data arriving from now on raises a new edge: wait
        // for it rather than pay a recvmsg that returns EAGAIN.
        if (static_cast<std::size_t>(n) < space.size() && msg.msg_controllen == 0)
            return start_read();
    }
    // Still readable: let other handlers run, then continue.
    asio::post(socket_.get_executor(), [weak = weak_from_this()] {
        auto self = weak.lock();
        if (self && self->state_ != State::closed)
            self->on_readable();
    });
}

// Hands every complete frame (or line) the decoder holds to `handle`, until one fails or the
// channel closes.
template <class Decoder, class Deliver>
std::error_code Channel::drain(Decoder& decoder, Deliver handle) {
    while (state_ != State::closed) {
        auto next = decoder.next();
        if (!next)
            return next.error();
        if (!next.value())
            return {};
        if (auto ec = (this->*handle)(*next.value()))
            return ec;
    }
    return {};
}

std::error_code Channel::deliver_frame(std::string_view body) {
    // A router takes the header parsed and the payload in place (split); everyone else gets a
    // Message viewing the frame in the read buffer.
    std::string_view payload;
    if (on_envelope_) {
        auto split = frame::split(body, header_);
        if (!split)
            return split.error();
        payload = split.value();
    } else if (!message_.view(body)) {
        return errc::bad_frame;
    }
    const std::size_t count = on_envelope_ ? header_.fd_count() : message_.fd_count();
    if (count > options_.max_fds_per_message)
        return errc::too_many_fds;
    if (count > received_fds_.size())
        return errc::fd_mismatch;
    message_.fds.clear();
    for (std::size_t i = 0; i < count; ++i) {
        message_.fds.push_back(std::move(received_fds_.front()));
        received_fds_.pop_front();
    }
    if (state_ == State::open) {
        if (on_envelope_)
            on_envelope_(header_, payload, message_.fds);
        else if (on_message_)
            on_message_(message_);
    }
    message_.fds.clear(); // what the handler did not take is closed
    return {};
}

// --- closing --------------------------------------------------------------------------------

void Channel::close() {
    if (state_ != State::open)
        return;
    state_ = State::closing;
    keep_alive_ = shared_from_this(); // until flushed, even if the caller lets go
    flush();
}

void Channel::disconnect() {
    finish({});
}

void Channel::fail(std::error_code ec) {
    finish(ec);
}

void Channel::finish(std::error_code ec) {
    if (state_ == State::closed)
        return;
    state_ = State::closed;
    boost::system::error_code ignored;
    socket_.close(ignored);
    received_fds_.clear();
    fd_batches_.clear();
    queued_fds_ = 0;
    out_->clear();
    std::vector<SendHandler> written, failed;
    for (auto& c : completions_)
        (c.end <= out_->begin() ? written : failed).push_back(std::move(c.handler));
    completions_.clear();
    if (unacked_ && unacked_->handler)
        failed.push_back(std::move(unacked_->handler));
    unacked_.reset();
    for (auto& h : held_)
        if (h.handler)
            failed.push_back(std::move(h.handler));
    held_.clear();
    held_bytes_ = 0;
    auto self = std::move(keep_alive_);
    // Like Node's 'disconnect', reported from the loop, never from inside the call that
    // caused it.
    asio::post(socket_.get_executor(), [self = shared_from_this(), ec, written = std::move(written),
                                        failed = std::move(failed)]() mutable {
        for (auto& handler : written)
            handler({});
        for (auto& handler : failed)
            handler(errc::channel_closed);
        if (auto handler = std::move(self->on_disconnect_))
            handler(ec);
        self->on_message_ = nullptr;
        self->on_internal_ = nullptr;
        self->on_drain_ = nullptr;
    });
}

} // namespace bus
