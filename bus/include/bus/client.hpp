// Client: the one API an application uses to talk to the bus (publish / subscribe, request /
// serve, direct messages), whatever the link underneath: a ZeroMQ connection to busd
// (ipc://), a unix:// connection speaking the channel framing (carries fds), or the channel
// inherited from a parent busd (from_parent).
//
// Handlers run on the caller's io_context, error first, as Channel's do. The client reconnects
// by itself (unix://, with backoff; ZeroMQ reconnects on its own) and re-establishes its
// subscriptions and services when it finds a new broker.
//
// The link's state is never a guess. When the broker goes away (its socket closes; over
// ZeroMQ, its connection drops or three heartbeats pass in silence) or cannot be reached at all
// (nobody listens on the endpoint), every call in flight fails with errc::broker_unavailable,
// and so does every request made until a broker answers again, at once. A request that failed
// is never sent later: what a ZeroMQ link still held for the lost broker is dropped with it.
//
// Nothing published is lost at exit: close() and the destructor hand over what is queued,
// waiting for it up to ClientOptions::linger.
#pragma once

#include "bus/channel.hpp"
#include "bus/error.hpp"
#include "bus/message.hpp"
#include "bus/subject.hpp"

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
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
    // How long close() and the destructor may wait for what is queued to reach the broker
    // (ZeroMQ's ZMQ_LINGER): a program that publishes and returns from main loses nothing.
    // Not waited for when the broker is known to be gone.
    std::chrono::milliseconds linger{2000};
};

// Something the client wants its user to know that is not a reply to a call.
struct ClientEvent {
    enum class Kind {
        connected,     // welcomed by a broker (again, after a restart)
        disconnected,  // no broker on the endpoint (`detail` names it); the client keeps trying
        slow_consumer, // the broker dropped `dropped` messages for us
        error,         // the broker refused something we sent (`error`, `detail`), or
                       // `dropped` messages could not be sent (errc::broker_unavailable)
    };
    Kind kind;
    std::uint64_t dropped = 0;
    std::error_code error;
    std::string detail;
};

// "connected", "disconnected", "slow_consumer", "error".
std::string_view to_string(ClientEvent::Kind kind) noexcept;

class Client;

// Given to a serve() handler: answer the request once (or not at all, and the requester's
// deadline answers for you). A copy may be kept and answered later, from the same loop.
class Responder {
public:
    void reply(const google::protobuf::Message& message, Fds fds = {});
    void reply_bytes(std::string_view payload, Fds fds = {});
    // A payload of the type `type_url` names, made elsewhere (a bridge forwarding a reply).
    void reply_typed(std::string_view payload, std::string_view type_url);
    // The requester's handler gets errc::request_failed, with `name` as the message's subject()
    // and `detail` as its "detail" header (as busd's own errors carry theirs); `bus req`
    // prints both. A name from bus's own table (error_wire_name) reads back as that errc.
    void fail(std::string_view name, std::string_view detail = {});
    std::string_view requester() const noexcept { return requester_; }

private:
    friend class Client;
    std::weak_ptr<Client> client_;
    std::uint64_t id_ = 0;
    std::string requester_;
    bool done_ = false;
};

namespace detail {
class ClientLink;
// The protobuf type a typed subscribe() handler takes: the second parameter of a callable
// void(std::error_code, const T&, Message&). No `type` for anything else.
template <class MemberCall>
struct typed_call {};
template <class C, class R, class E, class T, class M>
struct typed_call<R (C::*)(E, T, M) const> {
    using type = std::remove_cvref_t<T>;
};
template <class C, class R, class E, class T, class M>
struct typed_call<R (C::*)(E, T, M)> : typed_call<R (C::*)(E, T, M) const> {};
template <class F, class = void>
struct typed_handler {};
template <class F>
struct typed_handler<F, std::void_t<decltype(&F::operator())>>
    : typed_call<decltype(&F::operator())> {};
template <class F>
concept typed_message_handler = requires {
    typename typed_handler<std::decay_t<F>>::type;
}
&&std::is_base_of_v<google::protobuf::Message, typename typed_handler<std::decay_t<F>>::type>;
} // namespace detail

class Client : public std::enable_shared_from_this<Client> {
public:
    using MessageHandler = std::function<void(Message&)>;
    // A reply handler may take the Message by reference (and move from it), by const
    // reference, or by value.
    using ReplyHandler = std::function<void(std::error_code, Message&)>;
    using ServeHandler = std::function<void(Message& request, Responder& responder)>;
    using EventHandler = std::function<void(const ClientEvent&)>;
    using FlushHandler = std::function<void(std::error_code)>;

    // endpoint: "unix://PATH", "ipc://PATH", "tcp://HOST:PORT", or empty for
    // default_endpoint() (the user's busd over unix://). A unix:// endpoint with nobody
    // listening is an error here; over ZeroMQ connecting is asynchronous, and a missing broker
    // shows as errc::broker_unavailable on the first calls and a `disconnected` event.
    static Result<std::shared_ptr<Client>> connect(boost::asio::io_context& io,
                                                   std::string_view endpoint = {},
                                                   ClientOptions options = {});
    // In a process busd started: the bus over the inherited channel (a cluster worker's
    // BUS_CLIENT_FD, else BUS_CHANNEL_FD).
    static Result<std::shared_ptr<Client>> from_parent(boost::asio::io_context& io,
                                                       ClientOptions options = {});
    // Over a connected channel (bus serialization) whose other end a broker serves, such as a
    // socketpair one end of which busd's own Broker::adopt()ed: how busd's HTTP face joins the
    // bus it is part of.
    static Result<std::shared_ptr<Client>> adopt(boost::asio::io_context& io,
                                                 std::shared_ptr<Channel> channel,
                                                 ClientOptions options = {});
    // Hands over what is queued (up to ClientOptions::linger), then closes, as close() does,
    // without calling the handlers of calls still in flight.
    ~Client();

    // True: the message is queued for the broker (which is not delivery: a message is never
    // acknowledged). False: the link's queue is past its high-water mark (the message is
    // still queued: slow down), or the message could not be queued at all because no broker
    // is connected (an error event counts those, errc::broker_unavailable).
    bool publish(std::string_view subject, const google::protobuf::Message& message);
    bool publish_bytes(std::string_view subject, std::string_view payload);
    // The same with headers (key, value), which subscribers get as they were sent.
    using Headers = std::vector<std::pair<std::string, std::string>>;
    bool publish(std::string_view subject, const google::protobuf::Message& message,
                 const Headers& headers);
    bool publish_bytes(std::string_view subject, std::string_view payload, const Headers& headers);
    // The same with the payload's type named (type_url, "type.googleapis.com/pkg.Msg"), for
    // what forwards messages it did not make (busd's bridges).
    bool publish_bytes(std::string_view subject, std::string_view payload, const Headers& headers,
                       std::string_view type_url);

    // `*` matches one token, `>` the rest. With a queue group, each message goes to one
    // member of the group. Returns the subscription's id, for unsubscribe(). An invalid
    // pattern, or one the broker's access rules refuse, comes back as an error event
    // (errc::invalid_subject, errc::forbidden).
    std::uint64_t subscribe(std::string_view pattern, MessageHandler handler,
                            std::string_view queue_group = {});
    // Typed: the handler is void(std::error_code, const T&, Message&) and gets the decoded
    // message, or errc::wrong_type (never a crash) with T left empty. T is deduced from the
    // handler, or given: subscribe<Order>(...).
    template <class T, class F>
    requires std::is_invocable_v<F&, std::error_code, const T&, Message&> std::uint64_t
    subscribe(std::string_view pattern, F handler, std::string_view queue_group = {}) {
        return subscribe(
            pattern,
            [handler = std::move(handler)](Message& m) mutable {
                T value;
                auto ec = m.parse(value);
                handler(ec, value, m);
            },
            queue_group);
    }
    template <detail::typed_message_handler F>
    std::uint64_t subscribe(std::string_view pattern, F handler,
                            std::string_view queue_group = {}) {
        using T = typename detail::typed_handler<std::decay_t<F>>::type;
        return subscribe<T>(pattern, std::move(handler), queue_group);
    }
    void unsubscribe(std::uint64_t sid);

    // A copy of everything the broker routes whose subject matches `pattern` (and of every
    // reply and error), for inspectors (`bus monitor`): the handler's message has
    // envelope.monitored_kind() set. Only for the broker's own uid or the uids its config
    // names; otherwise an error event (errc::forbidden). unsubscribe() ends it.
    std::uint64_t monitor(std::string_view pattern, MessageHandler handler);

    // Exactly one call of `handler`, never from inside this call: the reply, or
    //   no_responders      nobody serves `service`
    //   timeout            no answer within `timeout`
    //   service_lost       the instance handling it went away
    //   expired            busd could not hand it to a service before its deadline
    //   broker_unavailable no broker (now, or it went away while the request was out)
    //   forbidden, invalid_subject, message_too_large   refused by the broker
    //   channel_closed     close() or drain() ended the client first
    //   request_failed     the service answered with Responder::fail(); the message's
    //                      subject() is the service's name for the error, and
    //                      header("detail") its detail
    // busd never hands a service a request whose deadline has passed, and a request that
    // completed with an error is never sent again: a service that must not run a request
    // twice, or after its requester gave up, can rely on both (docs/protocol.md).
    void request(std::string_view service, const google::protobuf::Message& message,
                 std::chrono::milliseconds timeout, ReplyHandler handler, Fds fds = {});
    void request_bytes(std::string_view service, std::string_view payload,
                       std::chrono::milliseconds timeout, ReplyHandler handler, Fds fds = {});
    // The same with headers and the payload's type named, for what forwards requests it did
    // not make (busd's bridges).
    void request_bytes(std::string_view service, std::string_view payload, const Headers& headers,
                       std::string_view type_url, std::chrono::milliseconds timeout,
                       ReplyHandler handler);
    // The same with a handler that takes the Message by value.
    template <class F>
    requires(!std::is_convertible_v<F, ReplyHandler> &&
             std::is_invocable_v<F&, std::error_code,
                                 Message&&>) void request(std::string_view service,
                                                          const google::protobuf::Message& message,
                                                          std::chrono::milliseconds timeout,
                                                          F handler, Fds fds = {}) {
        request(service, message, timeout, by_value(std::move(handler)), std::move(fds));
    }
    template <class F>
    requires(!std::is_convertible_v<F, ReplyHandler> &&
             std::is_invocable_v<F&, std::error_code,
                                 Message&&>) void request_bytes(std::string_view service,
                                                                std::string_view payload,
                                                                std::chrono::milliseconds timeout,
                                                                F handler, Fds fds = {}) {
        request_bytes(service, payload, timeout, by_value(std::move(handler)), std::move(fds));
    }

    // The same with an Asio completion token (a callback, use_awaitable, use_future, ...):
    // completes with (std::error_code, Message) through the handler's associated executor,
    // keeping the client alive until then. The message is serialized at once. With
    // use_awaitable, `co_await` yields both as a tuple (Asio 1.74 throws only for
    // boost::system::error_code), so errors stay values.
    template <class Token>
    auto async_request(std::string_view service, const google::protobuf::Message& message,
                       std::chrono::milliseconds timeout, Token&& token) {
        stage(message);
        return async_call(std::forward<Token>(token), std::string(service), type_url_, payload_,
                          timeout);
    }
    template <class Token>
    auto async_request_bytes(std::string_view service, std::string_view payload,
                             std::chrono::milliseconds timeout, Token&& token) {
        return async_call(std::forward<Token>(token), std::string(service), std::string(),
                          std::string(payload), timeout);
    }

    // Serves `service` (load-balanced across every client that serves it). Serving it again
    // replaces the handler. The handler's Responder answers; see Responder for what the
    // requester sees.
    void serve(std::string_view service, ServeHandler handler);
    void unserve(std::string_view service);

    // Tells the broker about a shared-memory queue (bus::shm::Queue) this program uses, so that
    // `bus ls queues` ($sys.queues) shows it with its depth and counters, read from the
    // segment. The records never pass through the broker. Kept across reconnects; forgotten
    // when this client disconnects.
    void announce_queue(std::string_view name);

    // To one client, by the id the broker gave it (Message::envelope.source()). An id nobody
    // has comes back as an error event (errc::no_such_client).
    void send_to(std::string_view client_id, const google::protobuf::Message& message,
                 Fds fds = {});
    void send_bytes_to(std::string_view client_id, std::string_view payload, Fds fds = {});
    void on_direct(MessageHandler handler) { on_direct_ = std::move(handler); }

    void on_event(EventHandler handler) { on_event_ = std::move(handler); }

    // Completes once the broker has processed everything sent before it (NATS's flush):
    // after it, this client's subscriptions and services are in place. Fails with timeout,
    // broker_unavailable or channel_closed; never from inside this call.
    void flush(FlushHandler handler, std::chrono::milliseconds timeout = std::chrono::seconds(5));
    template <class Token>
    auto async_flush(std::chrono::milliseconds timeout, Token&& token) {
        return boost::asio::async_initiate<Token, void(std::error_code)>(
            InitiateFlush{false}, token, shared_from_this(), timeout);
    }

    // Ends the client without losing what is in flight (NATS's Drain): stops receiving (its
    // subscriptions and services are withdrawn from the broker), delivers what the broker had
    // already routed to it (handlers keep running until then), hands over what it queued,
    // then closes and completes: no error, or timeout (closed anyway), broker_unavailable or
    // channel_closed. Requests of its own still in flight at the end fail with
    // channel_closed: await them first.
    void drain(FlushHandler handler, std::chrono::milliseconds timeout = std::chrono::seconds(5));
    template <class Token>
    auto async_drain(std::chrono::milliseconds timeout, Token&& token) {
        return boost::asio::async_initiate<Token, void(std::error_code)>(
            InitiateFlush{true}, token, shared_from_this(), timeout);
    }

    // Blocking conveniences for simple programs: they run the client's io_context until the
    // call completes, so use them only where nothing else runs that loop.
    Result<Message> request_wait(std::string_view service, const google::protobuf::Message& message,
                                 std::chrono::milliseconds timeout);
    std::error_code flush_wait(std::chrono::milliseconds timeout = std::chrono::seconds(5));

    // The id the broker gave this client; empty until welcomed.
    const std::string& id() const noexcept { return id_; }
    // What it connects to ("unix://...", or "its channel to busd" when it has no endpoint), for
    // messages.
    const std::string& endpoint() const noexcept { return endpoint_; }
    bool connected() const noexcept { return welcomed_; }
    // Hands over what is queued (up to ClientOptions::linger), fails the calls in flight with
    // errc::channel_closed (their handlers run inside this call), and closes. Nothing is
    // received after it.
    void close();

private:
    struct Calls;
    Client(boost::asio::io_context& io, ClientOptions options, std::string endpoint);
    void start();
    friend class detail::ClientLink;
    enum class Sent { ok, ok_but_full, failed };
    Sent send(v1::Envelope& header, std::string_view payload, Fds fds);
    Sent send_control(std::string_view op, const google::protobuf::Message* body,
                      std::uint64_t id = 0);
    void send_direct(std::string_view client_id, std::string_view type_url,
                     std::string_view payload, Fds fds);
    // A call awaiting its answer (Calls), failed at once, from the loop, when the client is
    // closed or knows there is no broker.
    std::uint64_t add_call(ReplyHandler handler, std::chrono::milliseconds timeout);
    void complete_later(std::uint64_t id, std::error_code ec);
    void send_request(std::string_view service, std::string_view type_url, std::string_view payload,
                      std::chrono::milliseconds timeout, ReplyHandler handler, Fds fds,
                      const Headers& headers = {});
    // A message that could not be queued: counted, and reported by a rate-limited error event.
    void unsent();
    void report_unsent();
    // A typed message's type is registered, it is serialized into payload_ and its type URL
    // written into type_url_.
    void stage(const google::protobuf::Message& message);
    v1::Envelope& header(v1::Kind kind, std::string_view subject);
    // What a link calls with each message it receives (valid during the call).
    static std::function<void(Message&)> receiver(std::weak_ptr<Client> weak);
    void receive(Message& message);
    void handle_control(const Message& header);
    void register_type(const google::protobuf::Descriptor* type);
    void link_up();
    void link_down(std::error_code ec);
    void link_connected();
    void register_everything();
    void shut(bool call_handlers);
    void finish_drain(std::error_code ec);
    // A handler leaving subscriptions_ or services_: kept alive until the outermost delivery
    // ends if one is running, since it may be the handler that is running.
    void retire(std::shared_ptr<void> handler);
    void heartbeat();
    void emit(ClientEvent event);
    void respond(std::uint64_t id, v1::Kind kind, std::string_view subject,
                 std::string_view type_url, std::string_view payload, Fds fds,
                 std::string_view detail = {});
    friend class Responder;

    template <class F>
    static ReplyHandler by_value(F handler) {
        return [handler = std::move(handler)](std::error_code ec, Message& m) mutable {
            handler(ec, std::move(m));
        };
    }
    // An Asio completion handler as a plain callback: it runs through the handler's associated
    // executor (outstanding work until then), and holds the client.
    template <class Signature, class Handler>
    auto completion(Handler handler);
    // Asio initiations: the operation's arguments are moved in (an awaitable may start it
    // later), never referenced.
    struct InitiateRequest {
        template <class Handler>
        void operator()(Handler handler, const std::shared_ptr<Client>& client,
                        const std::string& service, const std::string& type_url,
                        const std::string& payload, std::chrono::milliseconds timeout) const {
            client->send_request(
                service, type_url, payload, timeout,
                client->completion<void(std::error_code, Message)>(std::move(handler)), {});
        }
    };
    struct InitiateFlush {
        bool drain;
        template <class Handler>
        void operator()(Handler handler, const std::shared_ptr<Client>& client,
                        std::chrono::milliseconds timeout) const {
            auto done = client->completion<void(std::error_code)>(std::move(handler));
            drain ? client->drain(std::move(done), timeout)
                  : client->flush(std::move(done), timeout);
        }
    };
    template <class Token>
    auto async_call(Token&& token, std::string service, std::string type_url, std::string payload,
                    std::chrono::milliseconds timeout) {
        return boost::asio::async_initiate<Token, void(std::error_code, Message)>(
            InitiateRequest{}, token, shared_from_this(), std::move(service), std::move(type_url),
            std::move(payload), timeout);
    }

    boost::asio::io_context& io_;
    ClientOptions options_;
    std::string endpoint_;
    std::unique_ptr<detail::ClientLink> link_;
    std::unique_ptr<Calls> calls_; // requests and flushes awaiting their answer
    std::string id_;
    std::string broker_id_;
    bool welcomed_ = false;
    bool unavailable_ = false; // known: no broker on the link (until one answers again)
    bool closed_ = false;
    std::vector<FlushHandler> drains_; // drain() under way
    std::uint64_t next_id_ = 1;
    std::chrono::steady_clock::time_point last_heard_; // stamped by heartbeat() from heard_
    bool heard_ = false;                               // a message arrived since the last beat
    std::uint64_t unsent_ = 0;                         // not yet reported by an event
    std::chrono::steady_clock::time_point unsent_reported_{};

    struct Subscription {
        std::string pattern, queue;
        std::shared_ptr<MessageHandler> handler; // retired_ while it may be running
        bool monitor = false;
    };
    std::unordered_map<std::uint64_t, Subscription> subscriptions_;
    std::map<std::string, std::shared_ptr<ServeHandler>, std::less<>>
        services_;                   // as handlers; retired_ while they may be running
    std::set<std::string> queues_;   // announced
    v1::Envelope header_;            // reused by header()
    std::string payload_, type_url_; // reused by stage()
    // Types described to the current broker, so tools can decode what we send.
    std::unordered_set<const google::protobuf::Descriptor*> registered_types_;
    MessageHandler on_direct_;
    EventHandler on_event_;
    int delivering_ = 0; // receive() calls running (nested when a handler runs the loop)
    // Handlers unsubscribed, unserved or replaced while a delivery runs: destroyed when the
    // outermost one ends.
    std::vector<std::shared_ptr<void>> retired_;
    std::unique_ptr<boost::asio::steady_timer> heartbeat_timer_;
};

template <class Signature, class Handler>
auto Client::completion(Handler handler) {
    auto executor = boost::asio::get_associated_executor(handler, io_.get_executor());
    struct State {
        Handler handler;
        decltype(boost::asio::make_work_guard(executor)) work;
    };
    auto state =
        std::make_shared<State>(State{std::move(handler), boost::asio::make_work_guard(executor)});
    if constexpr (std::is_same_v<Signature, void(std::error_code)>) {
        return [state, self = shared_from_this()](std::error_code ec) {
            auto ex = state->work.get_executor();
            boost::asio::dispatch(ex, [state, ec]() mutable {
                auto work = std::move(state->work);
                std::move(state->handler)(ec);
            });
        };
    } else {
        return [state, self = shared_from_this()](std::error_code ec, Message& m) {
            auto ex = state->work.get_executor();
            boost::asio::dispatch(ex, [state, ec, m = std::move(m)]() mutable {
                auto work = std::move(state->work);
                std::move(state->handler)(ec, std::move(m));
            });
        };
    }
}

} // namespace bus
