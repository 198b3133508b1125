// A channel speaking Node's own IPC format ('json' serialization): newline-delimited JSON
// texts, a passed socket announced by a NODE_HANDLE message and held back until the peer's
// NODE_HANDLE_ACK (retransmitted on NACK, as Node does). The framing shared with bus mode, the
// write queue and the read loop are in channel.cpp.
#include "bus/channel.hpp"
#include "bus/message.hpp"
#include "transport/write_queue.hpp"

#include <boost/asio/post.hpp>
#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>

namespace bus {

namespace asio = boost::asio;

namespace {

constexpr int node_max_retransmissions = 3; // as Node's MAX_HANDLE_RETRANSMISSIONS

} // namespace

// --- sending ------------------------------------------------------------

std::string Channel::node_line(const google::protobuf::Message& message) const {
    auto json = to_json(message); // the shape the README promises Node ("Messages as JSON")
    if (!json)
        throw std::invalid_argument("bus::Channel: cannot map " +
                                    message.GetDescriptor()->full_name() + " to JSON");
    std::string line = std::move(json).value();
    line += '\n';
    return line;
}

std::string Channel::node_line(std::string_view json) const {
    // Node's JSON.parse() on a bad line throws in the peer's read callback and kills it, so
    // nothing that is not one JSON text leaves here; a newline inside would split it.
    if (!nlohmann::json::accept(json))
        throw std::invalid_argument("bus::Channel: a Node peer needs one JSON text per message");
    std::string line = json.find('\n') == std::string_view::npos
                           ? std::string(json)
                           : nlohmann::json::parse(json).dump();
    line += '\n';
    return line;
}

bool Channel::node_send(std::string line, Fds fds, SendHandler done) {
    if (fds.size() > 1)
        throw std::invalid_argument("bus::Channel: a Node peer takes one handle per message");
    if (state_ != State::open)
        return enqueue(out_->end(), {}, std::move(done));
    UniqueFd fd;
    if (!fds.owned_.empty()) {
        fd = std::move(fds.owned_.front());
    } else if (!fds.borrowed_.empty()) {
        // Kept until the peer acknowledges it, for retransmission.
        fd = UniqueFd(::fcntl(fds.borrowed_.front(), F_DUPFD_CLOEXEC, 0));
        if (!fd) {
            auto ec = last_error();
            if (done)
                asio::post(socket_.get_executor(), [done = std::move(done), ec] { done(ec); });
            return false;
        }
    }
    if (fd) {
        // Wrapped as Node's child_process does; the peer answers NODE_HANDLE_ACK or _NACK.
        line.pop_back();
        line = R"({"cmd":"NODE_HANDLE","type":"net.Socket","msg":)" + line + "}\n";
    }
    if (unacked_) {
        // Like Node: once a handle is in flight, everything after it waits for the ack, so
        // the peer sees messages in the order they were sent.
        held_bytes_ += line.size();
        queued_fds_ += fd ? 1 : 0;
        held_.push_back({std::move(line), std::move(fd), std::move(done)});
    } else if (fd) {
        node_write(line, fd.dup());
        unacked_.emplace(Held{std::move(line), std::move(fd), std::move(done)});
        retransmissions_ = 0;
    } else {
        node_write(line, {});
        if (done)
            completions_.push_back({out_->end(), std::move(done)});
    }
    schedule_flush();
    return !over_high_water();
}

void Channel::node_write(std::string_view line, UniqueFd fd) {
    const std::uint64_t position = out_->end();
    out_->tail() += line;
    if (fd) {
        ++queued_fds_;
        std::vector<UniqueFd> owned;
        owned.push_back(std::move(fd));
        fd_batches_.push_back({position, std::move(owned), {}});
    }
}

// After an ack: send what waited, up to and including the next handle.
void Channel::node_release_held() {
    while (!held_.empty() && !unacked_) {
        Held next = std::move(held_.front());
        held_.pop_front();
        held_bytes_ -= next.line.size();
        queued_fds_ -= next.fd ? 1 : 0;
        if (next.fd) {
            node_write(next.line, next.fd.dup());
            unacked_.emplace(std::move(next));
            retransmissions_ = 0;
        } else {
            node_write(next.line, {});
            if (next.handler)
                completions_.push_back({out_->end(), std::move(next.handler)});
        }
    }
    schedule_flush();
}

// --- receiving ------------------------------------------------------------------------------

std::error_code Channel::deliver_node(std::string_view text) {
    using Kind = frame::NodeLine::Kind;
    auto line = frame::parse_node_line(text);
    if (!line)
        return line.error();
    message_.fds.clear();
    switch (line.value().kind) {
    case Kind::handle_ack:
    case Kind::handle_nack: {
        if (!unacked_)
            return {}; // as Node: an ack for nothing is ignored
        const bool ack = line.value().kind == Kind::handle_ack;
        if (!ack && retransmissions_++ < node_max_retransmissions) {
            node_write(unacked_->line, unacked_->fd.dup());
            schedule_flush();
            return {};
        }
        auto handler = std::move(unacked_->handler);
        unacked_.reset();
        node_release_held();
        if (handler)
            handler(ack ? std::error_code{} : make_error_code(errc::handle_not_delivered));
        return {};
    }
    case Kind::internal:
        break; // Node's other internal messages (the cluster's): on_internal's
    case Kind::handle:
        // The fd came with this line's first byte; none means the kernel or the peer lost it.
        if (received_fds_.empty()) {
            node_write(R"({"cmd":"NODE_HANDLE_NACK"})"
                       "\n",
                       {});
            schedule_flush();
            return {};
        }
        node_write(R"({"cmd":"NODE_HANDLE_ACK"})"
                   "\n",
                   {});
        schedule_flush();
        message_.fds.push_back(std::move(received_fds_.front()));
        received_fds_.pop_front();
        break;
    case Kind::user:
        break;
    }
    const auto& handler = line.value().internal ? on_internal_ : on_message_;
    if (!handler || state_ != State::open) {
        message_.fds.clear(); // a handle nobody takes is closed
        return {};
    }
    v1::Envelope envelope;
    envelope.set_kind(v1::KIND_DATA);
    envelope.set_type_url(std::string(json_type_url));
    envelope.set_payload(std::move(line.value().payload));
    envelope.set_fd_count(static_cast<std::uint32_t>(message_.fds.size()));
    message_ = Message(std::move(envelope), std::move(message_.fds));
    handler(message_);
    message_.fds.clear();
    return {};
}

} // namespace bus
