#include "bus/client.hpp"

#include "bus/endpoint.hpp"
#include "bus/frame.hpp"
#include "bus/v1/broker.pb.h"
#include "transport/sockets.hpp"
#include "transport/zmq_link.hpp"

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

#include <cstdlib>
#include <cstring>
#include <deque>
#include <utility>

#include <sys/socket.h>
#include <sys/un.h>

namespace bus {
namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

std::int64_t deadline_after(std::chrono::milliseconds timeout) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               (std::chrono::system_clock::now() + timeout).time_since_epoch())
        .count();
}

} // namespace

// --- links ------------------------------------------------------------------------------------

namespace detail {

// A client's link to its broker: the channel framing over a socket (unix://, the parent's
// channel), or ZeroMQ (ipc://, tcp://).
class ClientLink {
public:
    using Sent = Client::Sent;
    virtual ~ClientLink() = default;
    virtual bool carries_fds() const = 0;
    // failed: not queued (no connection); ok_but_full: queued, past the high-water mark.
    virtual Sent send(const v1::Envelope& header, std::string_view payload, Fds fds) = 0;
    // ZeroMQ hides its connection: only heartbeats tell that a stalled broker went away.
    virtual bool needs_heartbeat_timeout() const = 0;
    // The broker is gone: drop whatever is still queued for it and connect afresh, so that
    // nothing the client already failed reaches the next broker. True if the client must
    // introduce itself on the new connection now (a channel link does when it reconnects).
    virtual bool restart() { return false; }
    // Hands what is queued to the broker, waiting up to `deadline`; nothing is sent after.
    virtual void close(Clock::time_point deadline) = 0;
};

} // namespace detail

namespace {

class ChannelLink final : public detail::ClientLink {
public:
    ChannelLink(asio::io_context& io, std::weak_ptr<Client> client, std::string path,
                std::shared_ptr<Channel> channel, ClientOptions options,
                std::function<void(Message&)> rx, std::function<void()> up,
                std::function<void(std::error_code)> down)
        : io_(io), client_(std::move(client)), path_(std::move(path)), options_(options),
          rx_(std::move(rx)), up_(std::move(up)), down_(std::move(down)), timer_(io) {
        attach(std::move(channel));
    }
    ~ChannelLink() override {
        timer_.cancel();
        if (channel_) {
            // Its handlers point here: the channel outlives this link for one more loop turn.
            channel_->on_message(nullptr);
            channel_->on_disconnect(nullptr);
            channel_->disconnect();
        }
    }

    bool carries_fds() const override { return true; }
    bool needs_heartbeat_timeout() const override { return false; }
    Sent send(const v1::Envelope& header, std::string_view payload, Fds fds) override {
        if (!channel_ || !channel_->connected())
            return Sent::failed;
        return channel_->send_split(header, payload, std::move(fds)) ? Sent::ok : Sent::ok_but_full;
    }
    void close(Clock::time_point deadline) override {
        timer_.cancel();
        if (channel_)
            (void)channel_->write_queued(deadline); // what is not written by then is lost
    }

private:
    void attach(std::shared_ptr<Channel> channel) {
        channel_ = std::move(channel);
        // The whole envelope, parsed in one pass: unlike a router, a client keeps the payload.
        channel_->on_message(rx_);
        channel_->on_disconnect([this, c = channel_.get()](std::error_code ec) {
            if (c != channel_.get())
                return;
            channel_.reset();
            down_(ec ? ec : make_error_code(errc::broker_unavailable));
            if (!path_.empty())
                reconnect(options_.reconnect_min);
        });
    }

    void reconnect(std::chrono::milliseconds delay) {
        timer_.expires_after(delay);
        timer_.async_wait([this, delay](boost::system::error_code ec) {
            if (ec || client_.expired())
                return;
            auto fd = bus::detail::connect_unix(path_);
            ChannelOptions co;
            co.max_message_size = options_.max_message_size;
            auto channel = fd ? Channel::adopt(io_, std::move(fd).value(), co)
                              : Result<std::shared_ptr<Channel>>(fd.error());
            if (!channel)
                return reconnect(std::min(delay * 2, options_.reconnect_max));
            attach(std::move(channel).value());
            up_();
        });
    }

    asio::io_context& io_;
    std::weak_ptr<Client> client_;
    std::string path_; // empty: the parent's channel, not reconnectable
    ClientOptions options_;
    std::function<void(Message&)> rx_;
    std::function<void()> up_;
    std::function<void(std::error_code)> down_;
    asio::steady_timer timer_;
    std::shared_ptr<Channel> channel_;
};

// ZeroMQ reconnects by itself and keeps what was queued for the next connection: restart()
// replaces the socket so that what the client gave up on stays unsent.
class ZmqClientLink final : public detail::ClientLink {
public:
    ZmqClientLink(asio::io_context& io, std::string endpoint, ClientOptions options,
                  std::string server_key, std::function<void(Message&)> rx,
                  std::function<void(bool)> on_connection,
                  std::function<void(std::error_code)> on_send_error)
        : io_(io), endpoint_(std::move(endpoint)), options_(std::move(options)),
          server_key_(std::move(server_key)), rx_(std::move(rx)),
          on_connection_(std::move(on_connection)), on_send_error_(std::move(on_send_error)) {
        open();
    }

    bool carries_fds() const override { return false; }
    bool needs_heartbeat_timeout() const override { return true; }
    Sent send(const v1::Envelope& header, std::string_view payload, Fds) override {
        return zmq_->send(header, payload) ? Sent::ok : Sent::ok_but_full;
    }
    bool restart() override {
        zmq_.reset();
        open();
        return true;
    }
    void close(Clock::time_point deadline) override { zmq_->close(deadline); }

private:
    void open() {
        zmq_ = std::make_unique<bus::detail::ZmqLink>(io_, endpoint_, options_.max_message_size,
                                                      server_key_, rx_, on_connection_,
                                                      on_send_error_);
    }

    asio::io_context& io_;
    std::string endpoint_;
    ClientOptions options_;
    std::string server_key_;
    std::function<void(Message&)> rx_;
    std::function<void(bool)> on_connection_;
    std::function<void(std::error_code)> on_send_error_;
    std::unique_ptr<bus::detail::ZmqLink> zmq_;
};

} // namespace

// --- calls awaiting an answer -------------------------------------------------------------------

// Requests and flushes, each completed once: with the answer, with an error, or with
// errc::timeout at its deadline. One timer serves every deadline: armed for the earliest, never
// cancelled when a call completes (that would cost a trip through the loop per call); when it
// fires it times out what is due and re-arms for the next.
struct Client::Calls {
    explicit Calls(asio::io_context& io) : timer(io) {}

    void add(std::uint64_t id, ReplyHandler handler, std::chrono::milliseconds timeout,
             Client& owner) {
        const auto deadline = Clock::now() + timeout;
        pending.emplace(id, Pending{std::move(handler), deadline});
        deadlines.emplace(deadline, id);
        if (deadline < armed_for) // (the weak reference only then: its count is atomic)
            arm(deadline, owner.weak_from_this());
    }

    void complete(std::uint64_t id, std::error_code ec, Message& message) {
        auto it = pending.find(id);
        if (it == pending.end())
            return; // already completed (timed out, then the reply came)
        auto call = std::move(it->second);
        pending.erase(it);
        deadlines.erase({call.deadline, id});
        call.handler(ec, message);
    }

    bool has(std::uint64_t id) const { return pending.count(id) != 0; }

    void fail_all(std::error_code ec) {
        auto calls = std::exchange(pending, {});
        deadlines.clear();
        Message empty;
        for (auto& [id, call] : calls)
            call.handler(ec, empty);
    }

private:
    struct Pending {
        ReplyHandler handler;
        Clock::time_point deadline;
    };

    void arm(Clock::time_point when, std::weak_ptr<Client> owner) {
        armed_for = when;
        timer.expires_at(when);
        timer.async_wait([owner](boost::system::error_code ec) {
            auto client = owner.lock(); // alive through the handlers it calls
            if (ec || !client)
                return; // re-armed for an earlier deadline, or closed
            auto& calls = *client->calls_;
            calls.armed_for = Clock::time_point::max();
            const auto now = Clock::now();
            while (!calls.deadlines.empty() && calls.deadlines.begin()->first <= now) {
                Message empty;
                calls.complete(calls.deadlines.begin()->second, errc::timeout, empty);
            }
            if (!calls.deadlines.empty() && calls.deadlines.begin()->first < calls.armed_for)
                calls.arm(calls.deadlines.begin()->first, owner);
        });
    }

    std::unordered_map<std::uint64_t, Pending> pending;
    std::set<std::pair<Clock::time_point, std::uint64_t>> deadlines;
    asio::steady_timer timer;
    Clock::time_point armed_for = Clock::time_point::max();
};

// --- requests ----------------------------------------------------------------------------------

void Responder::reply(const google::protobuf::Message& message, Fds fds) {
    if (auto c = client_.lock(); c && !done_) {
        done_ = true;
        c->stage(message);
        c->respond(id_, v1::KIND_REPLY, {}, c->type_url_, c->payload_, std::move(fds));
    }
}

void Responder::reply_bytes(std::string_view payload, Fds fds) {
    if (auto c = client_.lock(); c && !done_) {
        done_ = true;
        c->respond(id_, v1::KIND_REPLY, {}, {}, payload, std::move(fds));
    }
}

void Responder::reply_typed(std::string_view payload, std::string_view type_url) {
    if (auto c = client_.lock(); c && !done_) {
        done_ = true;
        c->respond(id_, v1::KIND_REPLY, {}, type_url, payload, {});
    }
}

void Responder::fail(std::string_view name, std::string_view detail) {
    if (auto c = client_.lock(); c && !done_) {
        done_ = true;
        c->respond(id_, v1::KIND_ERROR, name, {}, {}, {}, detail);
    }
}

std::string_view to_string(ClientEvent::Kind kind) noexcept {
    switch (kind) {
    case ClientEvent::Kind::connected:
        return "connected";
    case ClientEvent::Kind::disconnected:
        return "disconnected";
    case ClientEvent::Kind::slow_consumer:
        return "slow_consumer";
    case ClientEvent::Kind::error:
        return "error";
    }
    return "unknown";
}

// --- construction ------------------------------------------------------------------------------

Client::Client(asio::io_context& io, ClientOptions options, std::string endpoint)
    : io_(io), options_(std::move(options)), endpoint_(std::move(endpoint)),
      calls_(std::make_unique<Calls>(io)) {}

Client::~Client() {
    shut(false);
}

Result<std::shared_ptr<Client>> Client::connect(asio::io_context& io, std::string_view endpoint,
                                                ClientOptions options) {
    std::string text(endpoint);
    if (text.empty()) {
        auto def = default_endpoint();
        if (!def)
            return def.error();
        text = def.value();
    }
    auto parsed = parse_endpoint(text);
    if (!parsed)
        return parsed.error();
    std::shared_ptr<Client> client(new Client(io, options, text));
    std::weak_ptr<Client> weak = client;
    auto rx = receiver(weak);
    auto down = [weak](std::error_code ec) {
        if (auto c = weak.lock())
            c->link_down(ec);
    };
    switch (parsed.value().scheme) {
    case Endpoint::Scheme::ipc:
    case Endpoint::Scheme::tcp: {
        std::string key;
        if (parsed.value().scheme == Endpoint::Scheme::tcp) {
            key = options.server_key;
            if (const char* env = std::getenv("BUS_SERVER_KEY"); key.empty() && env)
                key = env;
            if (key.size() != 40)
                return errc::no_server_key;
        }
        auto on_connection = [weak](bool connected) {
            if (auto c = weak.lock())
                connected ? c->link_connected() : c->link_down(errc::broker_unavailable);
        };
        auto on_send_error = [weak](std::error_code ec) {
            if (auto c = weak.lock())
                c->emit({ClientEvent::Kind::error, 1, ec, "not sent to " + c->endpoint_});
        };
        try {
            client->link_ = std::make_unique<ZmqClientLink>(io, text, options, key, rx,
                                                            on_connection, on_send_error);
        } catch (const zmq::error_t& e) {
            return std::error_code(e.num(), std::system_category());
        }
        break;
    }
    case Endpoint::Scheme::unix_socket: {
        auto fd = detail::connect_unix(parsed.value().address);
        if (!fd)
            return fd.error();
        ChannelOptions co;
        co.max_message_size = options.max_message_size;
        auto channel = Channel::adopt(io, std::move(fd).value(), co);
        if (!channel)
            return channel.error();
        client->link_ = std::make_unique<ChannelLink>(
            io, weak, parsed.value().address, std::move(channel).value(), options, rx,
            [weak] {
                if (auto c = weak.lock()) {
                    c->link_connected();
                    c->link_up();
                }
            },
            down);
        break;
    }
    }
    client->start();
    return client;
}

Result<std::shared_ptr<Client>> Client::from_parent(asio::io_context& io, ClientOptions options) {
    ChannelOptions co;
    co.max_message_size = options.max_message_size;
    // A cluster worker has two: its cluster channel (the Worker's) and its bus link.
    auto channel = std::getenv("BUS_CLIENT_FD") ? Channel::from_environment(io, "BUS_CLIENT_FD", co)
                                                : Channel::from_parent(io, co);
    if (!channel)
        return channel.error();
    return adopt(io, std::move(channel).value(), std::move(options));
}

Result<std::shared_ptr<Client>>
Client::adopt(asio::io_context& io, std::shared_ptr<Channel> channel, ClientOptions options) {
    if (!channel || channel->options().serialization != Serialization::bus)
        return make_error_code(errc::unsupported_serialization);
    std::shared_ptr<Client> client(new Client(io, options, "its channel to busd"));
    std::weak_ptr<Client> weak = client;
    client->link_ = std::make_unique<ChannelLink>(
        io, weak, std::string(), std::move(channel), options, receiver(weak), [] {},
        [weak](std::error_code ec) {
            if (auto c = weak.lock())
                c->link_down(ec);
        });
    client->start();
    return client;
}

void Client::start() {
    last_heard_ = Clock::now();
    v1::Hello hello;
    hello.set_name(options_.name);
    send_control("hello", &hello);
    heartbeat_timer_ = std::make_unique<asio::steady_timer>(io_);
    heartbeat();
}

void Client::close() {
    shut(true);
}

void Client::shut(bool call_handlers) {
    if (closed_)
        return;
    closed_ = true;
    welcomed_ = false;
    if (heartbeat_timer_)
        heartbeat_timer_->cancel();
    if (link_ && !unavailable_)
        link_->close(Clock::now() + options_.linger);
    link_.reset();
    if (call_handlers)
        calls_->fail_all(errc::channel_closed);
}

// --- sending -----------------------------------------------------------------------------------

Client::Sent Client::send(v1::Envelope& header, std::string_view payload, Fds fds) {
    if (!fds.empty() && link_ && !link_->carries_fds())
        throw std::invalid_argument(
            "bus::Client: file descriptors need a unix:// link or the parent's channel");
    header.set_fd_count(static_cast<std::uint32_t>(fds.size()));
    if (closed_ || !link_)
        return Sent::failed;
    return link_->send(header, payload, std::move(fds));
}

Client::Sent Client::send_control(std::string_view op, const google::protobuf::Message* body,
                                  std::uint64_t id) {
    v1::Envelope header;
    header.set_kind(v1::KIND_CONTROL);
    header.set_subject(std::string(op));
    header.set_id(id);
    // Not counted when it fails: what the broker must know is sent again on the next link.
    return send(header, body ? body->SerializeAsString() : std::string(), {});
}

void Client::unsent() {
    if (closed_)
        return;
    ++unsent_;
    // The first of a run is reported at once, the rest at most once a heartbeat, counted
    // (heartbeat() reports what is left): a publisher in a loop while busd is down gets a
    // handful of events, not one per message.
    if (Clock::now() - unsent_reported_ >= options_.heartbeat)
        report_unsent();
}

void Client::report_unsent() {
    if (unsent_ == 0)
        return;
    unsent_reported_ = Clock::now();
    emit({ClientEvent::Kind::error, std::exchange(unsent_, 0),
          make_error_code(errc::broker_unavailable), "not sent: no broker at " + endpoint_});
}

// The file that defines `type` and everything it imports, imports first.
static void collect_files(const google::protobuf::FileDescriptor* file,
                          std::unordered_set<const google::protobuf::FileDescriptor*>& seen,
                          google::protobuf::FileDescriptorSet& set) {
    if (!seen.insert(file).second)
        return;
    for (int i = 0; i < file->dependency_count(); ++i)
        collect_files(file->dependency(i), seen, set);
    file->CopyTo(set.add_file());
}

void Client::register_type(const google::protobuf::Descriptor* type) {
    if (!registered_types_.insert(type).second)
        return;
    google::protobuf::FileDescriptorSet set;
    std::unordered_set<const google::protobuf::FileDescriptor*> seen;
    collect_files(type->file(), seen, set);
    v1::Envelope header;
    header.set_kind(v1::KIND_CONTROL);
    header.set_subject("register_type");
    header.set_type_url(std::string(frame::type_url_prefix) + type->full_name());
    send(header, set.SerializeAsString(), {}); // a new link registers its types again
}

static void add_headers(v1::Envelope& header, const Client::Headers& headers) {
    for (const auto& [key, value] : headers) {
        auto* h = header.add_headers();
        h->set_key(key);
        h->set_value(value);
    }
}

bool Client::publish(std::string_view subject, const google::protobuf::Message& message) {
    return publish(subject, message, Headers{});
}

bool Client::publish_bytes(std::string_view subject, std::string_view payload) {
    return publish_bytes(subject, payload, Headers{});
}

bool Client::publish(std::string_view subject, const google::protobuf::Message& message,
                     const Headers& headers) {
    stage(message);
    return publish_bytes(subject, payload_, headers, type_url_);
}

bool Client::publish_bytes(std::string_view subject, std::string_view payload,
                           const Headers& headers) {
    return publish_bytes(subject, payload, headers, {});
}

bool Client::publish_bytes(std::string_view subject, std::string_view payload,
                           const Headers& headers, std::string_view type_url) {
    auto& header = this->header(v1::KIND_PUBLISH, subject);
    add_headers(header, headers);
    if (!type_url.empty()) // (mutable_type_url() on an empty field costs a publish 8%)
        header.mutable_type_url()->assign(type_url);
    const auto sent = send(header, payload, {});
    if (sent == Sent::failed)
        unsent();
    return sent == Sent::ok;
}

// What the client sends reuses one header, one payload buffer and one type URL (their
// capacity, that is: no allocation per message): a link serializes what it is given before
// send() returns, so nothing holds on to them.
void Client::stage(const google::protobuf::Message& message) {
    register_type(message.GetDescriptor());
    message.SerializeToString(&payload_);
    type_url_.assign(frame::type_url_prefix).append(message.GetDescriptor()->full_name());
}

v1::Envelope& Client::header(v1::Kind kind, std::string_view subject) {
    header_.Clear();
    header_.set_kind(kind);
    header_.mutable_subject()->assign(subject); // (set_subject(p, n) builds a temporary string)
    return header_;
}

std::uint64_t Client::subscribe(std::string_view pattern, MessageHandler handler,
                                std::string_view queue_group) {
    const std::uint64_t sid = next_id_++;
    subscriptions_.emplace(sid, Subscription{std::string(pattern), std::string(queue_group),
                                             std::make_shared<MessageHandler>(std::move(handler))});
    v1::Subscribe sub;
    sub.set_sid(sid);
    sub.set_pattern(std::string(pattern));
    sub.set_queue_group(std::string(queue_group));
    send_control("sub", &sub);
    return sid;
}

void Client::retire(std::shared_ptr<void> handler) {
    if (delivering_)
        retired_.push_back(std::move(handler));
}

void Client::unsubscribe(std::uint64_t sid) {
    auto it = subscriptions_.find(sid);
    if (it == subscriptions_.end())
        return;
    const bool monitor = it->second.monitor;
    retire(std::move(it->second.handler));
    subscriptions_.erase(it);
    v1::Unsubscribe unsub;
    unsub.set_sid(sid);
    send_control(monitor ? "unmonitor" : "unsub", &unsub);
}

std::uint64_t Client::monitor(std::string_view pattern, MessageHandler handler) {
    const std::uint64_t sid = next_id_++;
    subscriptions_.emplace(sid, Subscription{std::string(pattern),
                                             {},
                                             std::make_shared<MessageHandler>(std::move(handler)),
                                             true});
    v1::Subscribe sub;
    sub.set_sid(sid);
    sub.set_pattern(std::string(pattern));
    send_control("monitor", &sub);
    return sid;
}

void Client::serve(std::string_view service, ServeHandler handler) {
    auto next = std::make_shared<ServeHandler>(std::move(handler));
    if (auto it = services_.find(service); it != services_.end()) {
        retire(std::exchange(it->second, std::move(next)));
        return;
    }
    services_.emplace(std::string(service), std::move(next));
    v1::Serve serve;
    serve.set_service(std::string(service));
    send_control("serve", &serve);
}

void Client::unserve(std::string_view service) {
    auto it = services_.find(service);
    if (it == services_.end())
        return;
    retire(std::move(it->second));
    services_.erase(it);
    v1::Serve serve;
    serve.set_service(std::string(service));
    send_control("unserve", &serve);
}

void Client::request(std::string_view service, const google::protobuf::Message& message,
                     std::chrono::milliseconds timeout, ReplyHandler handler, Fds fds) {
    stage(message);
    send_request(service, type_url_, payload_, timeout, std::move(handler), std::move(fds));
}

void Client::request_bytes(std::string_view service, std::string_view payload,
                           std::chrono::milliseconds timeout, ReplyHandler handler, Fds fds) {
    send_request(service, {}, payload, timeout, std::move(handler), std::move(fds));
}

void Client::request_bytes(std::string_view service, std::string_view payload,
                           const Headers& headers, std::string_view type_url,
                           std::chrono::milliseconds timeout, ReplyHandler handler) {
    send_request(service, type_url, payload, timeout, std::move(handler), {}, headers);
}

void Client::complete_later(std::uint64_t id, std::error_code ec) {
    asio::post(io_, [weak = weak_from_this(), id, ec] {
        if (auto c = weak.lock()) {
            Message empty;
            c->calls_->complete(id, ec, empty);
        }
    });
}

std::uint64_t Client::add_call(ReplyHandler handler, std::chrono::milliseconds timeout) {
    const std::uint64_t id = next_id_++;
    calls_->add(id, std::move(handler), timeout, *this);
    if (closed_ || unavailable_)
        complete_later(id, closed_ ? errc::channel_closed : errc::broker_unavailable);
    return id;
}

void Client::send_request(std::string_view service, std::string_view type_url,
                          std::string_view payload, std::chrono::milliseconds timeout,
                          ReplyHandler handler, Fds fds, const Headers& headers) {
    const std::uint64_t id = add_call(std::move(handler), timeout);
    // Failed already: nothing is sent, so nothing can reach a broker later.
    if (closed_ || unavailable_)
        return;
    auto& header = this->header(v1::KIND_REQUEST, service);
    header.mutable_type_url()->assign(type_url);
    add_headers(header, headers);
    header.set_id(id);
    header.set_deadline_unix_ns(deadline_after(timeout));
    if (send(header, payload, std::move(fds)) == Sent::failed)
        complete_later(id, errc::broker_unavailable);
}

void Client::send_to(std::string_view client_id, const google::protobuf::Message& message,
                     Fds fds) {
    stage(message);
    send_direct(client_id, type_url_, payload_, std::move(fds));
}

void Client::send_bytes_to(std::string_view client_id, std::string_view payload, Fds fds) {
    send_direct(client_id, {}, payload, std::move(fds));
}

void Client::send_direct(std::string_view client_id, std::string_view type_url,
                         std::string_view payload, Fds fds) {
    auto& header = this->header(v1::KIND_DIRECT, client_id);
    header.mutable_type_url()->assign(type_url);
    header.set_id(next_id_++);
    if (send(header, payload, std::move(fds)) == Sent::failed)
        unsent();
}

void Client::respond(std::uint64_t id, v1::Kind kind, std::string_view subject,
                     std::string_view type_url, std::string_view payload, Fds fds,
                     std::string_view detail) {
    auto& header = this->header(kind, subject);
    header.mutable_type_url()->assign(type_url);
    header.set_correlation_id(id);
    if (!detail.empty()) {
        auto* h = header.add_headers();
        h->set_key("detail");
        h->set_value(std::string(detail));
    }
    if (send(header, payload, std::move(fds)) == Sent::failed)
        unsent();
}

void Client::flush(FlushHandler handler, std::chrono::milliseconds timeout) {
    // A ping answered by a pong with the same id: the broker handles one client's messages in
    // order, so everything sent before it has been processed.
    const std::uint64_t id = add_call(
        [handler = std::move(handler)](std::error_code ec, Message&) { handler(ec); }, timeout);
    if (closed_ || unavailable_)
        return;
    if (send_control("ping", nullptr, id) == Sent::failed)
        complete_later(id, errc::broker_unavailable);
}

void Client::drain(FlushHandler handler, std::chrono::milliseconds timeout) {
    drains_.push_back(std::move(handler));
    if (drains_.size() > 1)
        return;    // completes with the drain under way
    if (closed_) { // from the loop, as every error known at once
        asio::post(io_, [weak = weak_from_this()] {
            if (auto c = weak.lock())
                c->finish_drain(errc::channel_closed);
        });
        return;
    }
    // Withdrawn from the broker, but the handlers stay until the flush: what the broker routed
    // here before it processed the withdrawal arrives before the flush's answer.
    for (const auto& [sid, sub] : subscriptions_) {
        v1::Unsubscribe unsub;
        unsub.set_sid(sid);
        send_control(sub.monitor ? "unmonitor" : "unsub", &unsub);
    }
    for (const auto& [name, served] : services_) {
        v1::Serve serve;
        serve.set_service(name);
        send_control("unserve", &serve);
    }
    flush(
        [weak = weak_from_this()](std::error_code ec) {
            if (auto c = weak.lock())
                c->finish_drain(ec);
        },
        timeout);
}

void Client::finish_drain(std::error_code ec) {
    for (auto& [sid, sub] : subscriptions_)
        retire(std::move(sub.handler));
    subscriptions_.clear();
    for (auto& [name, served] : services_)
        retire(std::move(served));
    services_.clear();
    close();
    for (auto& done : std::exchange(drains_, {}))
        done(ec);
}

// --- blocking conveniences ------

Result<Message> Client::request_wait(std::string_view service,
                                     const google::protobuf::Message& message,
                                     std::chrono::milliseconds timeout) {
    std::optional<std::error_code> result;
    Message reply;
    request(service, message, timeout, [&](std::error_code ec, Message& m) {
        result = ec;
        reply = std::move(m);
    });
    // The request's own timer bounds this loop.
    while (!result && !io_.stopped())
        io_.run_one();
    if (!result)
        return errc::channel_closed;
    if (*result)
        return *result;
    return reply;
}

std::error_code Client::flush_wait(std::chrono::milliseconds timeout) {
    std::optional<std::error_code> result;
    flush([&](std::error_code ec) { result = ec; }, timeout);
    while (!result && !io_.stopped())
        io_.run_one();
    return result ? *result : make_error_code(errc::channel_closed);
}

// --- receiving ---------------------------------------------------------------------------------

std::function<void(Message&)> Client::receiver(std::weak_ptr<Client> weak) {
    // The strong reference lives through the delivery: a handler may drop the client's last.
    return [weak = std::move(weak)](Message& m) {
        if (auto c = weak.lock())
            c->receive(m);
    };
}

void Client::receive(Message& message) {
    heard_ = true;
    if (message.kind() == v1::KIND_CONTROL)
        return handle_control(message);
    // Handlers may unsubscribe, or run the loop (the *_wait calls) and so nest deliveries.
    struct Delivering {
        Client& client;
        explicit Delivering(Client& c) : client(c) { ++client.delivering_; }
        ~Delivering() {
            if (--client.delivering_ == 0)
                client.retired_.clear();
        }
    } delivering(*this);
    switch (message.kind()) {
    case v1::KIND_PUBLISH:
        // Not a copy of the shared handler per message: unsubscribe() retires a running one.
        if (auto it = subscriptions_.find(message.subscription_id()); it != subscriptions_.end())
            (*it->second.handler)(message);
        break;
    case v1::KIND_REQUEST: {
        Responder responder;
        responder.client_ = weak_from_this();
        responder.id_ = message.id();
        responder.requester_ = message.source();
        if (auto it = services_.find(message.subject()); it != services_.end()) {
            (*it->second)(message, responder); // unserve() retires a running one
        } else {
            responder.fail(error_wire_name(errc::no_responders), "not served here any more");
        }
        break;
    }
    case v1::KIND_REPLY:
        calls_->complete(message.correlation_id(), {}, message);
        break;
    case v1::KIND_ERROR: {
        const auto ec = error_from_wire_name(message.subject());
        if (calls_->has(message.correlation_id())) {
            calls_->complete(message.correlation_id(), ec, message);
        } else {
            emit({ClientEvent::Kind::error, 0, ec, std::string(message.header("detail"))});
        }
        break;
    }
    case v1::KIND_DIRECT:
        if (on_direct_)
            on_direct_(message);
        break;
    default:
        break;
    }
}

void Client::handle_control(const Message& header) {
    const std::string_view op = header.subject(), payload = header.payload();
    if (op == "welcome" || op == "pong") {
        v1::Welcome welcome;
        if (!welcome.ParseFromArray(payload.data(), static_cast<int>(payload.size())))
            return;
        const bool restarted = !broker_id_.empty() && broker_id_ != welcome.broker_id();
        broker_id_ = welcome.broker_id();
        id_ = welcome.client_id();
        unavailable_ = false;
        if (restarted) {
            // A new broker knows nothing of us: introduce ourselves again.
            registered_types_.clear();
            v1::Hello hello;
            hello.set_name(options_.name);
            send_control("hello", &hello);
            register_everything();
        }
        if (!welcomed_ || restarted) {
            welcomed_ = true;
            emit({ClientEvent::Kind::connected, 0, {}, endpoint_});
        }
        if (op == "pong" && header.correlation_id()) {
            Message empty;
            calls_->complete(header.correlation_id(), {}, empty);
        }
        return;
    }
    if (op == "slow_consumer") {
        v1::SlowConsumer notice;
        if (notice.ParseFromArray(payload.data(), static_cast<int>(payload.size())))
            emit({ClientEvent::Kind::slow_consumer, notice.dropped(), {}, {}});
        return;
    }
    // "ping": hearing it is all it is for.
}

void Client::register_everything() {
    for (const auto& [sid, sub] : subscriptions_) {
        v1::Subscribe s;
        s.set_sid(sid);
        s.set_pattern(sub.pattern);
        s.set_queue_group(sub.queue);
        send_control(sub.monitor ? "monitor" : "sub", &s);
    }
    for (const auto& [name, handler] : services_) {
        v1::Serve s;
        s.set_service(name);
        send_control("serve", &s);
    }
    for (const auto& name : queues_) {
        v1::QueueAnnounce q;
        q.set_name(name);
        send_control("queue", &q);
    }
}

void Client::announce_queue(std::string_view name) {
    if (!queues_.emplace(name).second)
        return;
    v1::QueueAnnounce q;
    q.set_name(std::string(name));
    send_control("queue", &q);
}

// --- the link's state --------------------------------------------------------------------------

void Client::link_up() {
    // A new connection is a new client to the broker, restarted or not.
    broker_id_.clear();
    registered_types_.clear();
    v1::Hello hello;
    hello.set_name(options_.name);
    send_control("hello", &hello);
    register_everything();
}

void Client::link_connected() {
    unavailable_ = false;
    last_heard_ = Clock::now();
}

void Client::link_down(std::error_code) {
    if (closed_ || unavailable_)
        return; // one event per outage, however many ways it shows
    unavailable_ = true;
    welcomed_ = false;
    calls_->fail_all(errc::broker_unavailable);
    emit({ClientEvent::Kind::disconnected, 0, make_error_code(errc::broker_unavailable),
          "no broker at " + endpoint_});
    // Not from inside the link's own callback: restart() may replace the link.
    asio::post(io_, [weak = weak_from_this()] {
        auto c = weak.lock();
        if (!c || c->closed_ || !c->unavailable_ || !c->link_)
            return;
        try {
            if (c->link_->restart())
                c->link_up();
        } catch (const zmq::error_t& e) {
            // Out of descriptors, say: the old socket stays, and the next outage tries again.
            c->emit({ClientEvent::Kind::error, 0, std::error_code(e.num(), std::system_category()),
                     "cannot reconnect to " + c->endpoint_});
        }
    });
}

void Client::heartbeat() {
    heartbeat_timer_->expires_after(options_.heartbeat);
    heartbeat_timer_->async_wait([weak = weak_from_this()](boost::system::error_code ec) {
        auto c = weak.lock();
        if (ec || !c || c->closed_)
            return;
        // A delivery only raises heard_ (a clock read per message costs a subscriber more
        // than its handler). The beat that sees it stamps last_heard_, up to one beat late, so
        // two more silent beats mean three beats without a word.
        const auto now = Clock::now();
        if (std::exchange(c->heard_, false))
            c->last_heard_ = now;
        // Nothing from the broker for three beats, welcomed or still waiting for the first
        // welcome: treat it as gone. Its replacement (if any) answers on the new link.
        if (c->link_ && c->link_->needs_heartbeat_timeout() && !c->unavailable_ &&
            now - c->last_heard_ > 2 * c->options_.heartbeat)
            c->link_down(errc::broker_unavailable);
        // No pings into a link known to be down: ZeroMQ would queue them all for the next
        // broker. Its monitor says when a broker is there again.
        if (!c->unavailable_)
            c->send_control("ping", nullptr);
        c->report_unsent();
        c->heartbeat();
    });
}

void Client::emit(ClientEvent event) {
    if (on_event_)
        on_event_(event);
}

} // namespace bus
