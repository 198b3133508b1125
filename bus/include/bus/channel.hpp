// Channel: a message channel over a connected AF_UNIX stream socket, with Node.js
// process.send() / on('message') semantics, that can pass file descriptors with a message.
//
// Wire: in `bus` serialization each message is a frame of frame.hpp (u32 length + Envelope);
// in `node_json` it is Node's own 'json' IPC serialization (one JSON text per line, passed
// handles announced by NODE_HANDLE and acknowledged by NODE_HANDLE_ACK/NACK), so a C++ process
// can be the parent or the child of a Node process.
//
// File descriptors ride SCM_RIGHTS on the sendmsg() that carries the first byte of their
// frame, and that sendmsg carries no other frame's fds. The kernel never merges a stream read
// across the end of an skb that carried fds, so fds arrive with (never after) the first byte of
// their frame. The receiver keeps them in a FIFO and gives each frame exactly the count its
// envelope declares: too few is errc::fd_mismatch, fds with no frame left to claim them is
// errc::unexpected_fds. Both, like MSG_CTRUNC and every framing error, close the channel and
// every fd that arrived; nothing else in the process is touched.
//
// Writes are batched: send() appends to the write queue and schedules a flush for the end of the
// current loop turn, so all messages sent in one handler leave in one sendmsg(). Reads drain
// the socket (Asio's reactor is edge-triggered) and deliver every frame a read brought.
//
// Threading: a Channel lives on one io_context run by one thread; call it only from there.
#pragma once

#include "bus/error.hpp"
#include "bus/frame.hpp"
#include "bus/message.hpp"
#include "bus/unique_fd.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bus {

namespace detail {
class WriteQueue; // bus/src/transport/write_queue.hpp
} // namespace detail

enum class Serialization {
    bus,       // length-prefixed protobuf Envelopes
    node_json, // Node.js 'json' IPC serialization
};

struct ChannelOptions {
    Serialization serialization = Serialization::bus;
    std::size_t max_message_size = frame::default_max_frame;
    // Per message; the kernel passes at most 253 per sendmsg.
    std::size_t max_fds_per_message = 64;
    // send() returns false once this many bytes wait to be written (Node: 2 x 64 KiB).
    std::size_t high_water_mark = 128 * 1024;
    // ... or once this many fds wait: each queued fd is an open descriptor of this process.
    std::size_t high_water_fds = 128;
};

// The descriptors to send with one message: borrowed (the caller keeps them; the channel dups
// them only if the message has to wait for the socket) or owned (the channel closes them once
// sent).
class Fds {
public:
    Fds() = default;
    Fds(std::span<const int> borrowed) : borrowed_(borrowed) {}
    Fds(std::initializer_list<int> borrowed) : borrowed_(borrowed.begin(), borrowed.size()) {}
    Fds(std::vector<UniqueFd>&& owned) : owned_(std::move(owned)) {}

    std::size_t size() const noexcept { return borrowed_.size() + owned_.size(); }
    bool empty() const noexcept { return size() == 0; }

private:
    friend class Channel;
    std::span<const int> borrowed_;
    std::vector<UniqueFd> owned_;
};

class Channel : public std::enable_shared_from_this<Channel> {
public:
    // Valid during the call (it views the read buffer); move the Message, or its fds, to keep
    // them.
    using MessageHandler = std::function<void(Message&)>;
    // Once per channel, from the loop: an empty code for close()/disconnect() or a clean end
    // of stream, else what went wrong:
    //   frame_too_large, bad_frame, bad_json   the peer sent what the framing refuses
    //   truncated_frame                        the peer closed in the middle of a frame
    //   fd_mismatch, unexpected_fds, control_truncated, too_many_fds   fds and frames disagree
    //   a system error                         ECONNRESET, EPIPE, ... from the socket
    using DisconnectHandler = std::function<void(std::error_code)>;
    // For routers (busd): the envelope without its payload, the payload bytes in place, and the
    // fds; all valid during the call. Replaces on_message; bus serialization only.
    using EnvelopeHandler = std::function<void(v1::Envelope& header, std::string_view payload,
                                               std::vector<UniqueFd>& fds)>;
    // Once per send: empty when the message was handed to the kernel (in node_json mode with
    // a handle: when the peer acknowledged it), errc::channel_closed when it never will be,
    // errc::handle_not_delivered when a Node peer refused its handle past the retries.
    using SendHandler = std::function<void(std::error_code)>;

    // Takes a connected AF_UNIX stream socket and starts reading.
    static Result<std::shared_ptr<Channel>> adopt(boost::asio::io_context& io, UniqueFd socket,
                                                  ChannelOptions options = {});

    // Two connected channels (socketpair), for tests and in-process use.
    static Result<std::pair<std::shared_ptr<Channel>, std::shared_ptr<Channel>>>
    pair(boost::asio::io_context& io, ChannelOptions options = {});

    // In a child: the channel the parent left on BUS_CHANNEL_FD (bus serialization) or
    // NODE_CHANNEL_FD (Node's 'json'). Removes the variable and marks the fd close-on-exec so
    // grandchildren do not inherit it. errc::no_parent_channel if there is none.
    static Result<std::shared_ptr<Channel>> from_parent(boost::asio::io_context& io,
                                                        ChannelOptions options = {});
    // The same from the fd that environment `variable` names (bus serialization), e.g.
    // BUS_CLIENT_FD, the bus link busd gives a cluster worker beside its cluster channel.
    static Result<std::shared_ptr<Channel>> from_environment(boost::asio::io_context& io,
                                                             const char* variable,
                                                             ChannelOptions options = {});

    ~Channel();
    Channel(const Channel&) = delete;
    Channel& operator=(const Channel&) = delete;

    void on_message(MessageHandler handler) { on_message_ = std::move(handler); }
    void on_envelope(EnvelopeHandler handler) { on_envelope_ = std::move(handler); }
    void on_disconnect(DisconnectHandler handler) { on_disconnect_ = std::move(handler); }
    // After send() returned false, once the queue is back under the high-water mark.
    void on_drain(std::function<void()> handler) { on_drain_ = std::move(handler); }
    // Node mode: Node's own internal messages (a `cmd` of "NODE_..."; the cluster module's
    // are "NODE_CLUSTER"), which on_message never sees, as JSON, with the handle that came
    // with one. Without a handler they are dropped (a handle is closed), as Node's
    // child_process keeps them from user code. bus::cluster::Worker speaks the cluster's.
    void on_internal(MessageHandler handler) { on_internal_ = std::move(handler); }

    // Each returns false when the queue is at or past a high-water mark (the message is
    // still queued: stop sending until on_drain). On a Node channel, payloads travel as JSON:
    // a protobuf message through protobuf's JSON mapping, bytes and envelope payloads must be
    // one JSON text. Throws std::invalid_argument for more fds than the limit (one, on a Node
    // channel) or a payload a Node peer could not parse: those are programming errors.
    bool send(const google::protobuf::Message& message, Fds fds = {}, SendHandler done = {});
    bool send(const v1::Envelope& envelope, Fds fds = {}, SendHandler done = {});
    bool send_bytes(std::string_view payload, Fds fds = {}, SendHandler done = {});
    // `header` (payload empty) with `payload` as its payload, copied once, into the write
    // buffer: how a router forwards what it never parsed. Bus serialization only.
    bool send_split(const v1::Envelope& header, std::string_view payload, Fds fds = {},
                    SendHandler done = {});
    // The same with the header already serialized, its fd_count equal to fds.size().
    bool send_split(std::string_view header, std::string_view payload, Fds fds = {},
                    SendHandler done = {});

    // Stops delivering, writes what is queued, then closes. The channel stays alive for that
    // even if the caller drops it; dropping it without close() is a disconnect().
    void close();
    // Closes now; queued messages fail with errc::channel_closed.
    void disconnect();
    // Writes what is queued, blocking until it is written or `deadline` passes
    // (errc::timeout): for a program about to close the channel whose loop may not run again
    // (bus::Client's linger). Bus serialization; sends' completion handlers run later, from
    // the loop, if it runs.
    std::error_code write_queued(std::chrono::steady_clock::time_point deadline);

    bool connected() const noexcept { return state_ == State::open; }
    std::size_t queued_bytes() const noexcept;
    const ChannelOptions& options() const noexcept { return options_; }
    int native_handle() noexcept { return socket_.native_handle(); }

private:
    enum class State { open, closing, closed };
    struct FdBatch {
        std::uint64_t position; // stream offset of the frame's first byte
        std::vector<UniqueFd> owned;
        std::span<const int> borrowed; // only during the send() call that queued it
    };
    struct Completion {
        std::uint64_t end; // stream offset just past the message
        SendHandler handler;
    };
    // Node mode: a line that must wait for the peer to acknowledge a handle.
    struct Held {
        std::string line;
        UniqueFd fd;
        SendHandler handler;
    };

    Channel(boost::asio::io_context& io, int fd, ChannelOptions options);

    bool enqueue(std::uint64_t frame_start, Fds fds, SendHandler done);
    std::string node_line(const google::protobuf::Message& message) const;
    std::string node_line(std::string_view json) const;
    bool node_send(std::string line, Fds fds, SendHandler done);
    void node_release_held();
    void node_write(std::string_view line, UniqueFd fd);

    void schedule_flush();
    bool over_high_water();
    void wait_writable();
    void flush();
    std::error_code write_some();
    void start_read();
    void on_readable();
    template <class Decoder, class Deliver>
    std::error_code drain(Decoder& decoder, Deliver handle);
    std::error_code deliver_frame(std::string_view body);
    std::error_code deliver_node(std::string_view line);
    void fail(std::error_code ec);
    void finish(std::error_code ec);

    boost::asio::posix::stream_descriptor socket_;
    ChannelOptions options_;
    State state_ = State::open;

    // write side
    std::unique_ptr<detail::WriteQueue> out_; // by pointer: its definition is not API
    std::deque<FdBatch> fd_batches_;
    std::deque<Completion> completions_;
    std::size_t queued_fds_ = 0;
    bool flush_scheduled_ = false;
    bool delivering_ = false;           // inside on_readable's delivery of one read
    bool flush_after_delivery_ = false; // a send happened during it
    bool waiting_writable_ = false;
    bool above_hwm_ = false;

    // node_json write side: the handle awaiting NODE_HANDLE_ACK, and what waits behind it
    std::optional<Held> unacked_;
    int retransmissions_ = 0;
    std::deque<Held> held_;
    std::size_t held_bytes_ = 0;

    // read side
    frame::Decoder frames_;
    frame::LineDecoder lines_;
    std::deque<UniqueFd> received_fds_;
    Message message_;     // reused, so steady-state delivery does not allocate
    v1::Envelope header_; // a router's (on_envelope), reused the same way

    std::shared_ptr<Channel> keep_alive_; // set by close() until the queue is flushed

    MessageHandler on_message_;
    MessageHandler on_internal_;
    EnvelopeHandler on_envelope_;
    DisconnectHandler on_disconnect_;
    std::function<void()> on_drain_;
};

} // namespace bus
