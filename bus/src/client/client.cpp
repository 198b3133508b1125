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

struct Client::Link {
    virtual ~Link() = default;
    virtual bool carries_fds() const = 0;
    enum class Sent { ok, ok_but_full, failed };
    // failed: not queued (link down, or its queue full); ok_but_full: queued, past the
    // high-water mark.
    virtual Sent send(const v1::Envelope& header, std::string_view payload, Fds fds) = 0;
    // ZeroMQ hides its connection: only heartbeats tell that the broker went away.
    virtual bool needs_heartbeat_timeout() const = 0;
};

namespace {

class ChannelLink final : public Client::Link {
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
            auto fd = detail::connect_unix(path_);
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

// ZeroMQ hides its connection: only heartbeats tell that the broker went away.
class ZmqClientLink final : public Client::Link {
public:
    ZmqClientLink(asio::io_context& io, const std::string& endpoint, std::size_t max_message_size,
                  const std::string& server_key, std::function<void(Message&)> rx)
        : zmq_(io, endpoint, max_message_size, server_key, std::move(rx)) {}

    bool carries_fds() const override { return false; }
    bool needs_heartbeat_timeout() const override { return true; }
    Sent send(const v1::Envelope& header, std::string_view payload, Fds) override {
        return zmq_.send(header, payload) ? Sent::ok : Sent::ok_but_full;
    }

private:
    detail::ZmqLink zmq_;
};

} // namespace

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

void Responder::fail(std::string_view name, std::string_view detail) {
    if (auto c = client_.lock(); c && !done_) {
        done_ = true;
        c->respond(id_, v1::KIND_ERROR, name, {}, detail, {});
    }
}

// --- construction ------------------------------------------------------------------------------

Client::Client(asio::io_context& io, ClientOptions options) : io_(io), options_(options) {}

Client::~Client() {
    closed_ = true;
    if (heartbeat_timer_)
        heartbeat_timer_->cancel();
    if (deadline_timer_)
        deadline_timer_->cancel();
    link_.reset();
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
    std::shared_ptr<Client> client(new Client(io, options));
    std::weak_ptr<Client> weak = client;
    auto rx = receiver(weak);
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
        try {
            client->link_ =
                std::make_unique<ZmqClientLink>(io, text, options.max_message_size, key, rx);
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
                if (auto c = weak.lock())
                    c->link_up();
            },
            [weak](std::error_code ec) {
                if (auto c = weak.lock())
                    c->link_down(ec);
            });
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
    if (channel.value()->options().serialization != Serialization::bus)
        return errc::unsupported_serialization;
    std::shared_ptr<Client> client(new Client(io, options));
    std::weak_ptr<Client> weak = client;
    client->link_ = std::make_unique<ChannelLink>(
        io, weak, std::string(), std::move(channel).value(), options, receiver(weak), [] {},
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
    if (closed_)
        return;
    closed_ = true;
    fail_pending(errc::channel_closed);
    if (heartbeat_timer_)
        heartbeat_timer_->cancel();
    link_.reset();
}

// --- sending -----------------------------------------------------------------------------------

bool Client::send(v1::Envelope& header, std::string_view payload, Fds fds,
                  std::uint64_t request_id) {
    if (!fds.empty() && (!link_ || !link_->carries_fds()))
        throw std::invalid_argument(
            "bus::Client: file descriptors need a unix:// link or the parent's channel");
    header.set_fd_count(static_cast<std::uint32_t>(fds.size()));
    const auto sent =
        closed_ || !link_ ? Link::Sent::failed : link_->send(header, payload, std::move(fds));
    if (sent == Link::Sent::failed) {
        if (request_id) {
            Message empty;
            complete(request_id, errc::broker_unavailable, empty);
        } else if (!closed_) {
            emit({ClientEvent::Kind::error, 0, errc::broker_unavailable, "not sent"});
        }
    }
    return sent == Link::Sent::ok;
}

void Client::send_control(std::string_view op, const google::protobuf::Message* body,
                          std::uint64_t id) {
    v1::Envelope header;
    header.set_kind(v1::KIND_CONTROL);
    header.set_subject(std::string(op));
    header.set_id(id);
    send(header, body ? body->SerializeAsString() : std::string(), {});
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
    send(header, set.SerializeAsString(), {});
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
    auto& header = this->header(v1::KIND_PUBLISH, subject);
    add_headers(header, headers);
    header.mutable_type_url()->assign(type_url_);
    return send(header, payload_, {});
}

bool Client::publish_bytes(std::string_view subject, std::string_view payload,
                           const Headers& headers) {
    auto& header = this->header(v1::KIND_PUBLISH, subject);
    add_headers(header, headers);
    return send(header, payload, {});
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

// A call awaiting its answer, completed by complete(): with the answer, with an error, or
// with errc::timeout at its deadline. One timer serves every deadline: armed for the earliest,
// never cancelled when a call completes (that would cost a trip through the loop per call);
// when it fires it times out what is due and re-arms for the next.
std::uint64_t Client::add_pending(ReplyHandler handler, std::chrono::milliseconds timeout) {
    const std::uint64_t id = next_id_++;
    const auto deadline = Clock::now() + timeout;
    pending_.emplace(id, Pending{std::move(handler), deadline});
    deadlines_.emplace(deadline, id);
    if (deadline < armed_for_)
        arm_deadline_timer(deadline);
    return id;
}

void Client::arm_deadline_timer(Clock::time_point when) {
    if (!deadline_timer_)
        deadline_timer_ = std::make_unique<asio::steady_timer>(io_);
    armed_for_ = when;
    deadline_timer_->expires_at(when);
    deadline_timer_->async_wait([weak = weak_from_this()](boost::system::error_code ec) {
        auto c = weak.lock();
        if (ec || !c)
            return; // re-armed for an earlier deadline, or closed
        c->armed_for_ = Clock::time_point::max();
        const auto now = Clock::now();
        while (!c->deadlines_.empty() && c->deadlines_.begin()->first <= now) {
            Message empty;
            c->complete(c->deadlines_.begin()->second, errc::timeout, empty);
        }
        if (!c->deadlines_.empty() && c->deadlines_.begin()->first < c->armed_for_)
            c->arm_deadline_timer(c->deadlines_.begin()->first);
    });
}

void Client::send_request(std::string_view service, std::string_view type_url,
                          std::string_view payload, std::chrono::milliseconds timeout,
                          ReplyHandler handler, Fds fds) {
    const std::uint64_t id = add_pending(std::move(handler), timeout);
    auto& header = this->header(v1::KIND_REQUEST, service);
    header.mutable_type_url()->assign(type_url);
    header.set_id(id);
    header.set_deadline_unix_ns(deadline_after(timeout));
    if (closed_) {
        Message empty;
        return complete(id, errc::channel_closed, empty);
    }
    send(header, payload, std::move(fds), id);
}

void Client::send_to(std::string_view client_id, const google::protobuf::Message& message,
                     Fds fds) {
    stage(message);
    auto& header = this->header(v1::KIND_DIRECT, client_id);
    header.mutable_type_url()->assign(type_url_);
    header.set_id(next_id_++);
    send(header, payload_, std::move(fds));
}

void Client::send_bytes_to(std::string_view client_id, std::string_view payload, Fds fds) {
    auto& header = this->header(v1::KIND_DIRECT, client_id);
    header.set_id(next_id_++);
    send(header, payload, std::move(fds));
}

void Client::respond(std::uint64_t id, v1::Kind kind, std::string_view subject,
                     std::string_view type_url, std::string_view payload, Fds fds) {
    auto& header = this->header(kind, subject);
    header.mutable_type_url()->assign(type_url);
    header.set_correlation_id(id);
    send(header, payload, std::move(fds));
}

void Client::flush(std::function<void(std::error_code)> handler,
                   std::chrono::milliseconds timeout) {
    // A ping answered by a pong with the same id: the broker handles one client's messages in
    // order, so everything sent before it has been processed.
    const std::uint64_t id = add_pending(
        [handler = std::move(handler)](std::error_code ec, Message&) { handler(ec); }, timeout);
    send_control("ping", nullptr, id);
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

void Client::complete(std::uint64_t id, std::error_code ec, Message& message) {
    auto it = pending_.find(id);
    if (it == pending_.end())
        return; // already completed (timed out, then the reply came)
    auto pending = std::move(it->second);
    pending_.erase(it);
    deadlines_.erase({pending.deadline, id});
    pending.handler(ec, message);
}

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
        complete(message.correlation_id(), {}, message);
        break;
    case v1::KIND_ERROR: {
        const auto ec = error_from_wire_name(message.subject());
        if (pending_.count(message.correlation_id())) {
            complete(message.correlation_id(), ec, message);
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
            emit({ClientEvent::Kind::connected, 0, {}, {}});
        }
        if (op == "pong" && header.correlation_id()) {
            Message empty;
            complete(header.correlation_id(), {}, empty);
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

void Client::link_up() {
    // A new connection is a new client to the broker, restarted or not.
    broker_id_.clear();
    registered_types_.clear();
    last_heard_ = Clock::now();
    v1::Hello hello;
    hello.set_name(options_.name);
    send_control("hello", &hello);
    register_everything();
}

void Client::link_down(std::error_code ec) {
    fail_pending(errc::broker_unavailable);
    if (welcomed_) {
        welcomed_ = false;
        emit({ClientEvent::Kind::disconnected, 0, ec, {}});
    }
}

void Client::fail_pending(std::error_code ec) {
    auto pending = std::move(pending_);
    pending_.clear();
    deadlines_.clear();
    Message empty;
    for (auto& [id, p] : pending)
        p.handler(ec, empty);
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
        if (c->link_ && c->link_->needs_heartbeat_timeout() && c->welcomed_ &&
            now - c->last_heard_ > 2 * c->options_.heartbeat) {
            // Nothing from the broker for three beats: treat it as gone. Its replacement (if
            // any) answers a later ping with a new broker id, and we register again.
            c->link_down(errc::broker_unavailable);
        }
        c->send_control("ping", nullptr);
        c->heartbeat();
    });
}

void Client::emit(ClientEvent event) {
    if (on_event_)
        on_event_(event);
}

} // namespace bus
