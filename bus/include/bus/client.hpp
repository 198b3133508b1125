// Client: the one API an application uses to talk to the bus (publish / subscribe, request /
// serve, direct messages), whatever the link underneath: a ZeroMQ connection to busd
// (ipc://), a unix:// connection speaking the channel framing (carries fds), or the channel
// inherited from a parent busd (from_parent).
//
// Handlers run on the caller's io_context, error first, as Channel's do. The client reconnects
// by itself (unix://, with backoff; ZeroMQ reconnects on its own) and re-establishes its
// subscriptions and services when it finds a new broker. Pings both ways bound how long a dead
// broker goes unnoticed: requests in flight then fail with errc::broker_unavailable.
#pragma once

#include "bus/channel.hpp"
#include "bus/error.hpp"
#include "bus/message.hpp"
#include "bus/subject.hpp"

#include <boost/asio/async_result.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace google::protobuf {
class Descriptor;
}

namespace bus {

struct ClientOptions {
    std::string name;                            // shown by `bus ls clients`
    std::chrono::milliseconds heartbeat{1000};   // pings; 3 missed mean the broker is gone
    std::chrono::milliseconds reconnect_min{50}; // unix:// reconnect backoff
    std::chrono::milliseconds reconnect_max{2000};
    std::size_t max_message_size = 8u << 20;
    // For tcp://: the broker's CURVE public key (Z85); empty means BUS_SERVER_KEY.
    std::string server_key;
};

// Something the client wants its user to know that is not a reply to a call.
struct ClientEvent {
    enum class Kind {
        connected,     // welcomed by a broker (again, after a restart)
        disconnected,  // the link went down; the client is reconnecting
        slow_consumer, // the broker dropped `dropped` messages for us
        error,         // the broker refused something we sent (`error`, `detail`)
    };
    Kind kind;
    std::uint64_t dropped = 0;
    std::error_code error;
    std::string detail;
};

class Client;

// Given to a serve() handler: answer the request once (or not at all, and the requester's
// deadline answers for you).
class Responder {
public:
    void reply(const google::protobuf::Message& message, Fds fds = {});
    void reply_bytes(std::string_view payload, Fds fds = {});
    // The requester gets an error named `name` (shown to it as errc::service_lost-like text).
    void fail(std::string_view name, std::string_view detail = {});
    std::string_view requester() const noexcept { return requester_; }

private:
    friend class Client;
    std::weak_ptr<Client> client_;
    std::uint64_t id_ = 0;
    std::string requester_;
    bool done_ = false;
};

class Client : public std::enable_shared_from_this<Client> {
public:
    using MessageHandler = std::function<void(Message&)>;
    using ReplyHandler = std::function<void(std::error_code, Message&)>;
    using ServeHandler = std::function<void(Message& request, Responder& responder)>;
    using EventHandler = std::function<void(const ClientEvent&)>;

    // endpoint: "ipc://PATH", "unix://PATH", or empty for default_endpoint(). Connecting is
    // asynchronous for ZeroMQ; a unix:// endpoint with nobody listening is an error here.
    static Result<std::shared_ptr<Client>> connect(boost::asio::io_context& io,
                                                   std::string_view endpoint = {},
                                                   ClientOptions options = {});
    // In a process busd started: the bus over the inherited channel (a cluster worker's
    // BUS_CLIENT_FD, else BUS_CHANNEL_FD).
    static Result<std::shared_ptr<Client>> from_parent(boost::asio::io_context& io,
                                                       ClientOptions options = {});
    ~Client();

    // False when the link's queue is past its high-water mark (the message is still queued:
    // slow down) or the message could not be queued at all (an error event says why).
    bool publish(std::string_view subject, const google::protobuf::Message& message);
    bool publish_bytes(std::string_view subject, std::string_view payload);
    // The same with headers (key, value), which subscribers get as they were sent.
    using Headers = std::vector<std::pair<std::string, std::string>>;
    bool publish(std::string_view subject, const google::protobuf::Message& message,
                 const Headers& headers);
    bool publish_bytes(std::string_view subject, std::string_view payload, const Headers& headers);

    // `*` matches one token, `>` the rest. With a queue group, each message goes to one
    // member of the group. Returns the subscription's id, for unsubscribe().
    std::uint64_t subscribe(std::string_view pattern, MessageHandler handler,
                            std::string_view queue_group = {});
    // Typed: the handler gets the decoded message, or errc::wrong_type (never a crash).
    template <class T>
    std::uint64_t subscribe(std::string_view pattern,
                            std::function<void(std::error_code, const T&, Message&)> handler,
                            std::string_view queue_group = {}) {
        return subscribe(
            pattern,
            [handler = std::move(handler)](Message& m) {
                T value;
                auto ec = m.parse(value);
                handler(ec, value, m);
            },
            queue_group);
    }
    void unsubscribe(std::uint64_t sid);

    // A copy of everything the broker routes whose subject matches `pattern` (and of every
    // reply and error), for inspectors (`bus monitor`): the handler's message has
    // envelope.monitored_kind() set. Only for the broker's own uid or the uids its config
    // names; otherwise an error event (errc::forbidden). unsubscribe() ends it.
    std::uint64_t monitor(std::string_view pattern, MessageHandler handler);

    // Exactly one call of `handler`: the reply, or no_responders, timeout, service_lost,
    // broker_unavailable, or the error the service answered with.
    void request(std::string_view service, const google::protobuf::Message& message,
                 std::chrono::milliseconds timeout, ReplyHandler handler, Fds fds = {});
    void request_bytes(std::string_view service, std::string_view payload,
                       std::chrono::milliseconds timeout, ReplyHandler handler, Fds fds = {});

    // The same with an Asio completion token (use_awaitable, use_future, a callback):
    // completes with (std::error_code, Message); `co_await ... use_awaitable` yields them as a
    // tuple (Asio 1.74 throws only for boost::system::error_code), so errors stay values.
    template <class Token>
    auto async_request(std::string_view service, const google::protobuf::Message& message,
                       std::chrono::milliseconds timeout, Token&& token) {
        return boost::asio::async_initiate<Token, void(std::error_code, Message)>(
            [this, service = std::string(service), &message, timeout](auto handler) {
                auto shared = std::make_shared<decltype(handler)>(std::move(handler));
                request(service, message, timeout,
                        [shared](std::error_code ec, Message& m) { (*shared)(ec, std::move(m)); });
            },
            token);
    }

    void serve(std::string_view service, ServeHandler handler);
    void unserve(std::string_view service);

    // Tells the broker about a shared-memory queue (bus::shm::Queue) this program uses, so that
    // `bus ls queues` ($sys.queues) shows it with its depth and counters, read from the
    // segment. The records never pass through the broker. Kept across reconnects; forgotten
    // when this client disconnects.
    void announce_queue(std::string_view name);

    // To one client, by the id the broker gave it (Message::envelope.source()).
    void send_to(std::string_view client_id, const google::protobuf::Message& message,
                 Fds fds = {});
    void send_bytes_to(std::string_view client_id, std::string_view payload, Fds fds = {});
    void on_direct(MessageHandler handler) { on_direct_ = std::move(handler); }

    void on_event(EventHandler handler) { on_event_ = std::move(handler); }

    // Completes once the broker has processed everything sent before it (NATS's flush):
    // after it, this client's subscriptions and services are in place.
    void flush(std::function<void(std::error_code)> handler,
               std::chrono::milliseconds timeout = std::chrono::seconds(5));

    // Blocking conveniences for simple programs: they run the client's io_context until the
    // call completes, so use them only where nothing else runs that loop.
    Result<Message> request_wait(std::string_view service, const google::protobuf::Message& message,
                                 std::chrono::milliseconds timeout);
    std::error_code flush_wait(std::chrono::milliseconds timeout = std::chrono::seconds(5));

    // The id the broker gave this client; empty until welcomed.
    const std::string& id() const noexcept { return id_; }
    bool connected() const noexcept { return welcomed_; }
    void close();

    struct Link;
    // A call awaiting its answer (add_pending).
    struct Pending {
        ReplyHandler handler;
        std::chrono::steady_clock::time_point deadline;
    };

private:
    Client(boost::asio::io_context& io, ClientOptions options);
    void start();
    bool send(v1::Envelope& header, std::string_view payload, Fds fds,
              std::uint64_t request_id = 0);
    void send_control(std::string_view op, const google::protobuf::Message* body,
                      std::uint64_t id = 0);
    void send_request(std::string_view service, std::string_view type_url, std::string_view payload,
                      std::chrono::milliseconds timeout, ReplyHandler handler, Fds fds);
    // A typed message's type is registered, it is serialized into payload_ and its type URL
    // written into type_url_.
    void stage(const google::protobuf::Message& message);
    v1::Envelope& header(v1::Kind kind, std::string_view subject);
    void arm_deadline_timer(std::chrono::steady_clock::time_point when);
    // What a link calls with each message it receives (valid during the call).
    static std::function<void(Message&)> receiver(std::weak_ptr<Client> weak);
    void receive(Message& message);
    void handle_control(const Message& header);
    void register_type(const google::protobuf::Descriptor* type);
    void link_up();
    void link_down(std::error_code ec);
    void register_everything();
    void fail_pending(std::error_code ec);
    std::uint64_t add_pending(ReplyHandler handler, std::chrono::milliseconds timeout);
    void complete(std::uint64_t id, std::error_code ec, Message& message);
    // A handler leaving subscriptions_ or services_: kept alive until the outermost delivery
    // ends if one is running, since it may be the handler that is running.
    void retire(std::shared_ptr<void> handler);
    void heartbeat();
    void emit(ClientEvent event);
    void respond(std::uint64_t id, v1::Kind kind, std::string_view subject,
                 std::string_view type_url, std::string_view payload, Fds fds);
    friend class Responder;

    boost::asio::io_context& io_;
    ClientOptions options_;
    std::unique_ptr<Link> link_;
    std::string id_;
    std::string broker_id_;
    bool welcomed_ = false;
    bool closed_ = false;
    std::uint64_t next_id_ = 1;
    std::chrono::steady_clock::time_point last_heard_; // stamped by heartbeat() from heard_
    bool heard_ = false;                               // a message arrived since the last beat

    struct Subscription {
        std::string pattern, queue;
        std::shared_ptr<MessageHandler> handler; // retired_ while it may be running
        bool monitor = false;
    };
    std::unordered_map<std::uint64_t, Subscription> subscriptions_;
    std::unordered_map<std::string, std::shared_ptr<ServeHandler>, StringHash, std::equal_to<>>
        services_;                   // as handlers; retired_ while they may be running
    std::set<std::string> queues_;   // announced
    v1::Envelope header_;            // reused by header()
    std::string payload_, type_url_; // reused by stage()
    // Types described to the current broker, so tools can decode what we send.
    std::unordered_set<const google::protobuf::Descriptor*> registered_types_;
    std::unordered_map<std::uint64_t, Pending> pending_;
    std::set<std::pair<std::chrono::steady_clock::time_point, std::uint64_t>> deadlines_;
    std::unique_ptr<boost::asio::steady_timer> deadline_timer_;
    std::chrono::steady_clock::time_point armed_for_ = std::chrono::steady_clock::time_point::max();
    MessageHandler on_direct_;
    EventHandler on_event_;
    int delivering_ = 0; // receive() calls running (nested when a handler runs the loop)
    // Handlers unsubscribed, unserved or replaced while a delivery runs: destroyed when the
    // outermost one ends.
    std::vector<std::shared_ptr<void>> retired_;
    std::unique_ptr<boost::asio::steady_timer> heartbeat_timer_;
};

} // namespace bus
