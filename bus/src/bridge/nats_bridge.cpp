// The NATS bridge (nats_bridge.hpp says what it does). Two halves: nats.c's threads, which
// only copy what arrives and post it (through Hook), and busd's loop, where everything else
// runs (Impl).
#include "bridge/nats_bridge.hpp"

#include "bus/channel.hpp"
#include "bus/client.hpp"
#include "bus/frame.hpp"
#include "bus/message.hpp"
#include "bus/subject.hpp"

#include <boost/asio/detail/scheduler.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <nats/nats.h>

#include <atomic>
#include <charconv>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

#include <sys/socket.h>
#include <unistd.h>

namespace bus::bridge {
namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

// What travels beside a message on NATS, as headers: its bus type (so tools on the other host
// decode it), a request's deadline (unix ns), and a failed request's error name and detail.
constexpr const char* type_header = "bus-type";
constexpr const char* deadline_header = "bus-deadline";
constexpr const char* error_header = "bus-error";
constexpr const char* detail_header = "bus-detail";
// Every busd serving a name on NATS is one member of this queue group: NATS gives each request
// to one busd, which gives it to one of its instances.
constexpr const char* queue_group = "bus";
// Requests sent to NATS and not answered yet, at most; beyond, refused at once.
constexpr std::size_t max_requests_out = 10000;
// Type look-ups between bridges: a bridge that exports a message of type T answers requests on
// `_BUS.type.T` with T's FileDescriptorSet from its busd; a bridge that imports one asks once,
// and registers the answer with its busd, so tools there decode T (`bus sub --json`).
constexpr std::string_view type_subject = "_BUS.type.";
// Types a bridge answers for, and asks about, at most (a type per message cannot grow busd).
constexpr std::size_t max_types = 1000;
// Durable subjects: the busd that published a message through JetStream (its durable_name), so
// that its own consumer does not deliver it back to it.
constexpr const char* origin_header = "bus-origin";
// After it connects, a bridge waits this long before its durable consumers deliver: what
// waited in JetStream while busd was down is for the subscribers that come back with it.
constexpr auto durable_grace = std::chrono::seconds(2);

// Bridges alive in this process: when the last one goes, nats.c is closed and its threads
// waited for, so that its last callbacks (which free the bridges' hooks) have run before busd
// exits, and nothing of it outlives busd's loop.
std::atomic<int> live_bridges{0};

std::int64_t now_unix_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// A NATS message, copied off nats.c's thread.
struct Incoming {
    // A JetStream message, kept to be acknowledged once busd has it.
    std::shared_ptr<natsMsg> durable;
    std::string subject, reply, data;
    Client::Headers headers;
    bool no_responders = false;

    const std::string* header(std::string_view key) const {
        for (const auto& [k, v] : headers)
            if (k == key)
                return &v;
        return nullptr;
    }
    // The headers a bus peer should see: the bridge's own are taken off.
    Client::Headers user_headers() const {
        Client::Headers out;
        for (const auto& h : headers)
            if (!h.first.starts_with("bus-"))
                out.push_back(h);
        return out;
    }
};

Incoming copy(natsMsg* m) {
    Incoming in;
    in.subject = natsMsg_GetSubject(m);
    if (const char* reply = natsMsg_GetReply(m))
        in.reply = reply;
    in.data.assign(natsMsg_GetData(m), static_cast<std::size_t>(natsMsg_GetDataLength(m)));
    in.no_responders = natsMsg_IsNoResponders(m);
    const char** keys = nullptr;
    int count = 0;
    if (natsMsgHeader_Keys(m, &keys, &count) == NATS_OK) {
        for (int i = 0; i < count; ++i) {
            const char** values = nullptr;
            int n = 0;
            if (natsMsgHeader_Values(m, keys[i], &values, &n) == NATS_OK) {
                for (int j = 0; j < n; ++j)
                    in.headers.emplace_back(keys[i], values[j]);
                std::free(values);
            }
        }
        std::free(keys);
    }
    return in;
}

// NATS headers are HTTP-like lines: a key or value that would break the line is left out.
bool header_fits(std::string_view key, std::string_view value) {
    auto clean = [](std::string_view s) { return s.find_first_of("\r\n") == s.npos; };
    return !key.empty() && key.find(':') == key.npos && key.find(' ') == key.npos && clean(key) &&
           clean(value);
}

std::string nats_error(natsStatus s) {
    std::string text = natsStatus_GetText(s);
    if (const char* last = nats_GetLastError(nullptr); last && *last && text != last)
        text += std::string(" (") + last + ")";
    return text;
}

} // namespace

// What nats.c's threads share with the loop. Its users hold references (refs): the bridge,
// the connection (let go in its closed callback, nats.c's last) and each subscription (let go
// in its on-complete callback, after its last message callback returned); the last one
// frees it. Callbacks post to the loop only while the bridge lives (`closing` unset): the
// bridge waits for callbacks under way (`active`) before busd's loop may go.
struct Hook {
    Hook(asio::io_context& io_, std::size_t max_pending_) : io(io_), max_pending(max_pending_) {}

    asio::io_context& io;
    std::weak_ptr<NatsBridge::Impl> bridge;
    const std::size_t max_pending;
    std::atomic<std::size_t> pending{0};
    std::atomic<std::uint64_t> overflow{0};
    std::atomic<std::uint64_t> reconnects{0};
    std::atomic<bool> closing{false};
    std::atomic<int> active{0};
    std::atomic<int> refs{2}; // the bridge's, and the connection's (let go by on_closed)
    std::atomic<bool> connection_share{true}; // the connection's not let go yet

    void retain() { ++refs; }
    void release() {
        if (--refs == 0)
            delete this;
    }
    // The connection's share, once: by its closed callback, or by the last bridge when none
    // came.
    void release_connection() {
        if (connection_share.exchange(false))
            release();
    }

    // Runs `f` on the loop with the bridge, if it is still there then.
    template <class F>
    void post(F f) {
        ++active;
        if (!closing)
            asio::post(io, [weak = bridge, f = std::move(f)]() mutable {
                if (auto b = weak.lock())
                    f(*b);
            });
        --active;
    }
    // A message for the loop, unless max_pending are waiting there already (then counted).
    template <class F>
    void post_message(F f) {
        if (pending.fetch_add(1) >= max_pending) {
            --pending;
            ++overflow;
            return;
        }
        post([this, f = std::move(f)](NatsBridge::Impl& b) mutable {
            --pending;
            f(b);
        });
    }
};

// Hooks of bridges gone with no connection of theirs to close (busd's loop only). nats.c calls
// no closed callback for a connection whose first connect failed, except when it cannot start
// the reconnecting for a retried first connect (conn.c, _processOpError: then it posts one
// and still fails the connect). So such a hook may yet hear of its closing: its connection's
// share is let go only once nats_CloseAndWait has joined nats.c's threads, and never if that
// times out (a hook left at exit rather than one freed under a callback).
static std::vector<Hook*> orphans;

struct NatsBridge::Impl : std::enable_shared_from_this<NatsBridge::Impl> {
    Impl(asio::io_context& io_, broker::Broker& broker_, daemon::NatsBridgeConfig config_)
        : io(io_), broker(broker_), config(std::move(config_)),
          hook(new Hook(io_, config.max_pending)) {}

    ~Impl() {
        hook->closing = true;
        if (connector.joinable())
            connector.join();
        if (jetstream.joinable())
            jetstream.join();
        {
            std::lock_guard lock(connect_mutex);
            if (connect_result && !nc)
                nc = connect_result; // the loop had not taken it yet
        }
        if (nc) {
            // Closing ends every subscription: each on-complete callback lets go of the hook,
            // the closed callback lets go of the connection's share.
            for (auto* s : subs)
                natsSubscription_Destroy(s);
            for (auto& [name, s] : services)
                natsSubscription_Destroy(s);
            for (auto* s : durable_subs)
                natsSubscription_Destroy(s);
            if (js)
                jsCtx_Destroy(js);
            natsConnection_Close(nc);
            natsConnection_Destroy(nc);
        } else {
            orphans.push_back(hook); // its share: let go after nats.c is closed (orphans)
        }
        while (hook->active > 0)
            std::this_thread::yield();
        if (opts)
            natsOptions_Destroy(opts);
        if (client)
            client->close();
        hook->release();
    }

    // --- set-up (loop) -----------------------------------------------------------------

    std::string configure() {
        natsStatus s = natsOptions_Create(&opts);
        std::vector<const char*> servers;
        for (const auto& url : config.servers)
            servers.push_back(url.c_str());
        const std::string label = "busd-bridge-" + config.name;
        if (s == NATS_OK)
            s = natsOptions_SetServers(opts, servers.data(), static_cast<int>(servers.size()));
        if (s == NATS_OK)
            s = natsOptions_SetName(opts, label.c_str());
        // NATS never hands the bridge what it published itself: with the broker's rule (what a
        // bridge sent never reaches a bridge), no message goes round.
        if (s == NATS_OK)
            s = natsOptions_SetNoEcho(opts, true);
        // The servers in the config's order: the first is the bridge's own, the others where it
        // goes when that one fails.
        if (s == NATS_OK)
            s = natsOptions_SetNoRandomize(opts, true);
        if (s == NATS_OK)
            s = natsOptions_SetMaxReconnect(opts, -1);
        if (s == NATS_OK)
            s = natsOptions_SetReconnectWait(opts, 250);
        if (s == NATS_OK)
            s = natsOptions_SetTimeout(opts, 2000);
        if (s == NATS_OK)
            s = natsOptions_SetReconnectBufSize(opts, static_cast<int>(config.buffer_bytes));
        if (s == NATS_OK)
            s = natsOptions_SetDisconnectedCB(opts, &Impl::on_disconnected, hook);
        if (s == NATS_OK)
            s = natsOptions_SetReconnectedCB(opts, &Impl::on_reconnected, hook);
        if (s == NATS_OK)
            s = natsOptions_SetClosedCB(opts, &Impl::on_closed, hook);
        if (s == NATS_OK)
            s = natsOptions_SetErrorHandler(opts, &Impl::on_error, hook);
        if (s == NATS_OK && !config.user.empty())
            s = natsOptions_SetUserInfo(opts, config.user.c_str(), config.password.c_str());
        if (s == NATS_OK && !config.token.empty())
            s = natsOptions_SetToken(opts, config.token.c_str());
        if (s == NATS_OK && !config.nkey.empty())
            s = natsOptions_SetNKeyFromSeed(opts, config.nkey.c_str(), config.nkey_seed.c_str());
        if (s == NATS_OK && !config.creds.empty())
            s = natsOptions_SetUserCredentialsFromFiles(opts, config.creds.c_str(), nullptr);
        const bool tls = !config.tls_ca.empty() || !config.tls_cert.empty() ||
                         std::any_of(config.servers.begin(), config.servers.end(),
                                     [](const auto& u) { return u.starts_with("tls://"); });
        if (s == NATS_OK && tls)
            s = natsOptions_SetSecure(opts, true);
        if (s == NATS_OK && !config.tls_ca.empty())
            s = natsOptions_LoadCATrustedCertificates(opts, config.tls_ca.c_str());
        if (s == NATS_OK && !config.tls_cert.empty())
            s = natsOptions_LoadCertificatesChain(opts, config.tls_cert.c_str(),
                                                  config.tls_key.c_str());
        if (s != NATS_OK)
            return "bridge " + config.name + ": " + nats_error(s);
        return {};
    }

    std::string attach() {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0)
            return std::string("cannot make the bridge's link: ") + std::strerror(errno);
        UniqueFd ours(sv[0]), theirs(sv[1]);
        auto channel = Channel::adopt(io, std::move(ours));
        if (!channel)
            return "cannot make the bridge's link: " + channel.error().message();
        broker.adopt_bridge(std::move(theirs));
        ClientOptions options;
        options.name = "busd-bridge-" + config.name;
        auto c = Client::adopt(io, std::move(channel).value(), options);
        if (!c)
            return "cannot start the bridge: " + c.error().message();
        client = std::move(c).value();
        std::weak_ptr<Impl> weak = weak_from_this();
        for (const auto& pattern : config.exports)
            client->subscribe(pattern, [weak](Message& m) {
                if (auto b = weak.lock())
                    b->export_message(m);
            });
        for (const auto& pattern : config.durables)
            client->subscribe(pattern, [weak](Message& m) {
                if (auto b = weak.lock())
                    b->export_durable(m);
            });
        for (const auto& name : config.imports)
            if (valid_subject(name)) // a literal name: served here, answered on NATS
                client->serve(name, [weak](Message& request, Responder& responder) {
                    if (auto b = weak.lock())
                        b->request_out(request, responder);
                });
        for (const auto& name : broker.local_services())
            local_service(name, true);
        return {};
    }

    // Connecting may take a while (a server that does not answer): on a thread of its own.
    // Once, to learn why it fails (nats.c's retries forget it): credentials the servers refuse
    // are an error to fix, and the bridge gives up; no server yet, it keeps trying.
    void connect() {
        connector = std::thread([this] {
            natsConnection* c = nullptr;
            natsStatus s = natsConnection_Connect(&c, opts);
            std::string why = s == NATS_OK ? "" : nats_error(s);
            const bool refused = s == NATS_CONNECTION_AUTH_FAILED ||
                                 why.find("uthorization") != std::string::npos ||
                                 why.find("uthentication") != std::string::npos;
            if (s != NATS_OK && !refused && !hook->closing &&
                natsOptions_SetRetryOnFailedConnect(opts, true, &Impl::on_connected, hook) ==
                    NATS_OK) {
                s = natsConnection_Connect(&c, opts);
                if (s == NATS_OK)
                    why.clear();
                else if (s != NATS_NOT_YET_CONNECTED)
                    why = nats_error(s);
            }
            {
                std::lock_guard lock(connect_mutex);
                connect_result = c;
            }
            hook->post([s, why](Impl& b) { b.connect_done(s, why); });
        });
    }

    void connect_done(natsStatus s, const std::string& why) {
        {
            std::lock_guard lock(connect_mutex);
            nc = std::exchange(connect_result, nullptr);
        }
        error = why;
        if (!nc) {
            state = "failed";
            log("bridge " + config.name + ": cannot connect to NATS: " + why);
            return;
        }
        if (s == NATS_OK) {
            state = "connected";
            log("bridge " + config.name + ": connected to " + server());
        } else {
            state = "connecting";
            log("bridge " + config.name + ": no NATS server answers yet (" + why + "), retrying");
        }
        for (const auto& pattern : config.imports)
            subscribe(pattern, nullptr, &Impl::on_message<&Impl::import_message>);
        natsInbox* box = nullptr;
        if (natsInbox_Create(&box) == NATS_OK) {
            inbox = box;
            natsInbox_Destroy(box);
            subscribe(inbox + ".*", nullptr, &Impl::on_message<&Impl::reply_in>);
        }
        for (const auto& name : exported_services)
            serve_on_nats(name);
        if (!config.durables.empty())
            start_jetstream();
    }

    // --- durable subjects (JetStream) ------------------------------------------------------

    bool durable(const std::string& subject) const {
        return std::any_of(config.durables.begin(), config.durables.end(),
                           [&](const auto& p) { return subject_matches(p, subject); });
    }

    std::string stream_name() const { return "BUS_" + config.name; }

    // The stream (made, or found made by another busd) and this busd's durable consumers: API
    // requests that wait for JetStream's answer (its leader may not be elected yet), so on a
    // thread of their own, retried until they succeed or the bridge stops.
    void start_jetstream() {
        jsOptions o;
        jsOptions_Init(&o);
        o.Wait = 2000;
        o.PublishAsync.ErrHandler = &Impl::on_durable_refused;
        o.PublishAsync.ErrHandlerClosure = hook;
        o.PublishAsync.MaxPending = 65536;
        o.PublishAsync.StallWait = 1; // a full window is a drop, not a wait on busd's loop
        if (const natsStatus s = natsConnection_JetStream(&js, nc, &o); s != NATS_OK) {
            error = "JetStream: " + nats_error(s);
            log("bridge " + config.name + ": " + error);
            return;
        }
        consumer = config.durable_name.empty() ? host_name() : config.durable_name;
        jetstream = std::thread([this] {
            std::string last;
            while (!hook->closing) {
                std::string why = make_stream();
                if (why.empty())
                    why = bind_consumers();
                if (why.empty())
                    break;
                if (why != last)
                    hook->post([why](Impl& b) {
                        b.error = "JetStream: " + why;
                        b.log("bridge " + b.config.name + ": JetStream not ready (" + why +
                              "), retrying");
                    });
                last = why;
                for (int i = 0; i < 10 && !hook->closing; ++i)
                    std::this_thread::sleep_for(std::chrono::milliseconds(50));
            }
            if (!hook->closing)
                hook->post([](Impl& b) {
                    b.error.clear();
                    b.log("bridge " + b.config.name +
                          ": durable subjects through JetStream stream " + b.stream_name() +
                          ", consumer " + b.consumer);
                });
        });
    }

    static std::string host_name() {
        char name[256] = {};
        ::gethostname(name, sizeof name - 1);
        std::string out;
        for (char c : std::string(name))
            out += std::isalnum(static_cast<unsigned char>(c)) || c == '-' ? c : '_';
        return out.empty() ? "busd" : out;
    }

    // (the JetStream thread)
    std::string make_stream() {
        const std::string name = stream_name();
        std::vector<const char*> subjects;
        for (const auto& p : config.durables)
            subjects.push_back(p.c_str());
        jsStreamConfig cfg;
        jsStreamConfig_Init(&cfg);
        cfg.Name = name.c_str();
        cfg.Subjects = subjects.data();
        cfg.SubjectsLen = static_cast<int>(subjects.size());
        cfg.Storage = js_FileStorage;
        jsErrCode code = static_cast<jsErrCode>(0);
        jsStreamInfo* info = nullptr;
        natsStatus s = js_AddStream(&info, js, &cfg, nullptr, &code);
        if (s != NATS_OK && code == JSStreamNameExistErr)
            s = js_UpdateStream(&info, js, &cfg, nullptr, &code);
        if (info)
            jsStreamInfo_Destroy(info);
        return s == NATS_OK ? std::string() : nats_error(s);
    }

    // (the JetStream thread) A durable push consumer per pattern, acknowledged by hand.
    std::string bind_consumers() {
        for (auto waited = std::chrono::milliseconds(0); waited < durable_grace && !hook->closing;
             waited += std::chrono::milliseconds(50))
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        const std::string stream = stream_name();
        std::lock_guard lock(durable_mutex);
        for (std::size_t i = durable_subs.size(); i < config.durables.size(); ++i) {
            const std::string durable_name = consumer + "_" + std::to_string(i);
            jsSubOptions so;
            jsSubOptions_Init(&so);
            so.Stream = stream.c_str();
            so.ManualAck = true;
            so.Config.Durable = durable_name.c_str();
            so.Config.DeliverPolicy = js_DeliverAll;
            so.Config.AckWait = 30'000'000'000; // ns
            natsSubscription* sub = nullptr;
            jsErrCode code = static_cast<jsErrCode>(0);
            hook->retain();
            const natsStatus s = js_Subscribe(&sub, js, config.durables[i].c_str(),
                                              &Impl::on_durable, hook, nullptr, &so, &code);
            if (s != NATS_OK) {
                hook->release();
                return nats_error(s);
            }
            natsSubscription_SetPendingLimits(sub, -1, -1);
            natsSubscription_SetOnCompleteCB(sub, &Impl::on_complete, hook);
            durable_subs.push_back(sub);
        }
        return {};
    }

    // A local publish on a durable subject: into the stream, acknowledged by JetStream.
    void export_durable(Message& m) {
        const std::string subject(m.subject());
        natsMsg* msg = nullptr;
        const auto payload = m.payload();
        if (!js || natsMsg_Create(&msg, subject.c_str(), nullptr, payload.data(),
                                  static_cast<int>(payload.size())) != NATS_OK) {
            ++dropped;
            return;
        }
        copy_headers(m, msg);
        natsMsgHeader_Set(msg, origin_header, consumer.c_str());
        if (js_PublishMsgAsync(js, &msg, nullptr) != NATS_OK) {
            natsMsg_Destroy(msg);
            ++dropped;
            return;
        }
        ++msgs_out;
        bytes_out += payload.size();
    }

    // A message from this busd's durable consumer: published here, then acknowledged (so a
    // busd that stops before publishing it gets it again).
    void import_durable(const Incoming& in) {
        const auto* origin = in.header(origin_header);
        if (!(origin && *origin == consumer) && valid_subject(in.subject)) {
            const auto* type = in.header(type_header);
            if (!client->publish_bytes(in.subject, in.data, in.user_headers(),
                                       type ? std::string_view(*type) : std::string_view()) &&
                !client->connected()) {
                natsMsg_Nak(in.durable.get(), nullptr);
                return;
            }
            ++msgs_in;
            bytes_in += in.data.size();
        }
        natsMsg_Ack(in.durable.get(), nullptr);
    }

    natsSubscription* subscribe(const std::string& subject, const char* queue, natsMsgHandler cb,
                                bool keep = true) {
        natsSubscription* sub = nullptr;
        hook->retain();
        const natsStatus s =
            queue ? natsConnection_QueueSubscribe(&sub, nc, subject.c_str(), queue, cb, hook)
                  : natsConnection_Subscribe(&sub, nc, subject.c_str(), cb, hook);
        if (s != NATS_OK) {
            hook->release();
            error = "cannot subscribe to " + subject + ": " + nats_error(s);
            log("bridge " + config.name + ": " + error);
            return nullptr;
        }
        // nats.c's own bound per subscription, above ours: ours counts what it drops.
        natsSubscription_SetPendingLimits(sub, -1, -1);
        natsSubscription_SetOnCompleteCB(sub, &Impl::on_complete, hook);
        if (keep)
            subs.push_back(sub);
        return sub;
    }

    // --- services --------------------------------------------------------------------------

    bool exported(const std::string& subject) const {
        return std::any_of(config.exports.begin(), config.exports.end(),
                           [&](const auto& p) { return subject_matches(p, subject); });
    }

    // A local service began or ceased to be (Broker::on_local_service).
    void local_service(const std::string& name, bool served) {
        if (!exported(name))
            return;
        if (served) {
            if (exported_services.insert(name).second && nc)
                serve_on_nats(name);
        } else {
            exported_services.erase(name);
            if (auto it = services.find(name); it != services.end()) {
                natsSubscription_Unsubscribe(it->second);
                natsSubscription_Destroy(it->second);
                services.erase(it);
            }
        }
    }

    void serve_on_nats(const std::string& name) {
        if (services.contains(name))
            return;
        if (auto* sub = subscribe(name, queue_group, &Impl::on_message<&Impl::request_in>, false))
            services.emplace(name, sub);
    }

    // A NATS request for a local service: a local request, answered on NATS.
    void request_in(const Incoming& in) {
        ++requests_in;
        bytes_in += in.data.size();
        if (in.reply.empty())
            return; // a publish on a service's name: nobody to answer
        auto timeout = config.request_timeout;
        if (const auto* d = in.header(deadline_header)) {
            std::int64_t deadline = 0;
            std::from_chars(d->data(), d->data() + d->size(), deadline);
            timeout = std::chrono::milliseconds((deadline - now_unix_ns()) / 1'000'000);
            if (timeout.count() <= 0)
                return answer(in.reply, {}, {}, "expired", "its deadline passed on the way");
        }
        const auto* type = in.header(type_header);
        std::weak_ptr<Impl> weak = weak_from_this();
        client->request_bytes(in.subject, in.data, in.user_headers(), type ? *type : std::string(),
                              timeout, [weak, reply = in.reply](std::error_code ec, Message& m) {
                                  auto b = weak.lock();
                                  if (!b)
                                      return;
                                  if (!ec)
                                      return b->answer(reply, m.payload(), m.type_url(), {}, {});
                                  if (ec == errc::request_failed)
                                      return b->answer(reply, {}, {}, m.subject(),
                                                       m.header("detail"));
                                  b->answer(reply, {}, {},
                                            ec.category() == bus_category()
                                                ? error_wire_name(static_cast<errc>(ec.value()))
                                                : std::string_view("request_failed"),
                                            ec.message());
                              });
    }

    void answer(const std::string& reply, std::string_view payload, std::string_view type,
                std::string_view error_name, std::string_view detail) {
        natsMsg* msg = nullptr;
        if (natsMsg_Create(&msg, reply.c_str(), nullptr, payload.data(),
                           static_cast<int>(payload.size())) != NATS_OK)
            return;
        if (!type.empty())
            natsMsgHeader_Set(msg, type_header, std::string(type).c_str());
        if (!error_name.empty()) {
            natsMsgHeader_Set(msg, error_header, std::string(error_name).c_str());
            if (header_fits(detail_header, detail))
                natsMsgHeader_Set(msg, detail_header, std::string(detail).c_str());
        }
        send(msg, payload.size());
    }

    // A local request for a name this bridge imports: a NATS request with the same deadline.
    void request_out(Message& request, Responder& responder) {
        ++requests_out;
        if (!nc)
            return responder.fail("no_responders", "bridge " + config.name + " has no NATS server");
        if (requests.size() >= max_requests_out)
            return responder.fail("service_lost",
                                  "too many requests in flight on bridge " + config.name);
        const std::uint64_t id = next_request++;
        const std::string reply = inbox + "." + std::to_string(id);
        natsMsg* msg = nullptr;
        const auto payload = request.payload();
        if (natsMsg_Create(&msg, std::string(request.subject()).c_str(), reply.c_str(),
                           payload.data(), static_cast<int>(payload.size())) != NATS_OK)
            return responder.fail("service_lost", "cannot make a NATS message");
        copy_headers(request, msg);
        const auto deadline = request.envelope().deadline_unix_ns();
        if (deadline)
            natsMsgHeader_Set(msg, deadline_header, std::to_string(deadline).c_str());
        if (!send(msg, payload.size()))
            return responder.fail("service_lost", "bridge " + config.name + " dropped it");
        auto& pending = requests.try_emplace(id, responder, io).first->second;
        // Forgotten at its deadline: the requester has been told `timeout` by then.
        const auto left = std::chrono::nanoseconds(deadline ? deadline - now_unix_ns() : 0);
        pending.timer.expires_after(deadline ? std::max(left, std::chrono::nanoseconds(0))
                                             : std::chrono::nanoseconds(config.request_timeout));
        pending.timer.async_wait([weak = weak_from_this(), id](boost::system::error_code ec) {
            if (auto b = weak.lock(); b && !ec)
                b->requests.erase(id);
        });
    }

    void reply_in(const Incoming& in) {
        const auto dot = in.subject.rfind('.');
        std::uint64_t id = 0;
        std::from_chars(in.subject.data() + dot + 1, in.subject.data() + in.subject.size(), id);
        if (auto t = type_requests.find(id); t != type_requests.end()) {
            const std::string name = t->second;
            type_requests.erase(t);
            return type_answer(name, in);
        }
        auto it = requests.find(id);
        if (it == requests.end())
            return; // late: its requester has given up
        Responder responder = it->second.responder;
        requests.erase(it);
        bytes_in += in.data.size();
        if (in.no_responders)
            return responder.fail("no_responders", "nobody serves it on NATS");
        if (const auto* e = in.header(error_header)) {
            const auto* detail = in.header(detail_header);
            return responder.fail(*e, detail ? *detail : std::string());
        }
        const auto* type = in.header(type_header);
        responder.reply_typed(in.data, type ? *type : std::string());
    }

    // --- messages ------------------------------------------------------------------------

    void copy_headers(Message& m, natsMsg* msg) {
        for (const auto& h : m.envelope().headers())
            if (header_fits(h.key(), h.value()) && !h.key().starts_with("bus-"))
                natsMsgHeader_Add(msg, h.key().c_str(), h.value().c_str());
        if (!m.type_url().empty())
            natsMsgHeader_Set(msg, type_header, std::string(m.type_url()).c_str());
    }

    // Hands a message to nats.c (and lets go of it); false when it was dropped (counted).
    bool send(natsMsg* msg, std::size_t bytes) {
        const natsStatus s = nc ? natsConnection_PublishMsg(nc, msg) : NATS_CONNECTION_CLOSED;
        natsMsg_Destroy(msg);
        if (s != NATS_OK) {
            ++dropped;
            return false;
        }
        ++msgs_out;
        bytes_out += bytes;
        return true;
    }

    // A local publish on an exported subject.
    void export_message(Message& m) {
        const std::string subject(m.subject());
        if (subject.starts_with("$") || durable(subject))
            return; // busd's own events; durable subjects go through JetStream
        natsMsg* msg = nullptr;
        const auto payload = m.payload();
        if (natsMsg_Create(&msg, subject.c_str(), nullptr, payload.data(),
                           static_cast<int>(payload.size())) != NATS_OK) {
            ++dropped;
            return;
        }
        copy_headers(m, msg);
        if (!m.type_url().empty()) // before the message: its receivers may ask at once
            answer_for_type(type_name(m.type_url()));
        send(msg, payload.size());
    }

    static std::string type_name(std::string_view url) {
        return std::string(url.starts_with(frame::type_url_prefix)
                               ? url.substr(frame::type_url_prefix.size())
                               : url);
    }

    // From the first export of a type on: its description for whoever asks on NATS.
    void answer_for_type(const std::string& name) {
        if (!nc || types_answered.size() >= max_types || types_answered.contains(name) ||
            !valid_subject(name))
            return;
        types_answered.insert(name);
        subscribe(std::string(type_subject) + name, queue_group,
                  &Impl::on_message<&Impl::type_request>);
    }

    void type_request(const Incoming& in) {
        if (in.reply.empty())
            return;
        const std::string name = in.subject.substr(type_subject.size());
        auto a = broker.query("$sys.type", name, ::getuid());
        if (!a.reply)
            return answer(in.reply, {}, {}, "no_responders", "type " + name + " is not registered");
        answer(in.reply, a.reply->SerializeAsString(), {}, {}, {});
    }

    // An imported message of a type this busd does not know: asked once on NATS.
    void learn_type(const std::string& name) {
        if (!nc || types_asked.size() >= max_types || !types_asked.insert(name).second ||
            !valid_subject(name) || broker.query("$sys.type", name, ::getuid()).reply)
            return;
        const std::uint64_t id = next_request++;
        natsMsg* msg = nullptr;
        if (natsMsg_Create(&msg, (std::string(type_subject) + name).c_str(),
                           (inbox + "." + std::to_string(id)).c_str(), nullptr, 0) != NATS_OK)
            return;
        if (natsConnection_PublishMsg(nc, msg) == NATS_OK)
            type_requests.emplace(id, name);
        natsMsg_Destroy(msg);
    }

    void type_answer(const std::string& name, const Incoming& in) {
        if (in.no_responders || in.header(error_header)) {
            types_asked.erase(name); // asked again with the next message of the type
            return;
        }
        std::string detail;
        if (broker.register_type(name, in.data, "bridge " + config.name, detail))
            log("bridge " + config.name + ": type " + name + " from NATS refused: " + detail);
    }

    // A NATS message on an imported subject, published locally.
    void import_message(const Incoming& in) {
        if (durable(in.subject))
            return; // it comes through this busd's durable consumer
        // A request for a name this bridge serves here too: not a publish.
        if (!in.reply.empty() && std::find(config.imports.begin(), config.imports.end(),
                                           in.subject) != config.imports.end())
            return;
        if (!valid_subject(in.subject) || in.subject.starts_with("$")) {
            ++dropped; // a NATS subject bus cannot carry
            return;
        }
        const auto* type = in.header(type_header);
        if (type)
            learn_type(type_name(*type));
        if (client->publish_bytes(in.subject, in.data, in.user_headers(),
                                  type ? std::string_view(*type) : std::string_view()) ||
            client->connected()) {
            ++msgs_in;
            bytes_in += in.data.size();
        } else {
            ++dropped;
        }
    }

    // --- nats.c's threads ------------------------------------------------------------------

    // A message for `Handle`, on the loop.
    template <void (Impl::*Handle)(const Incoming&)>
    static void on_message(natsConnection*, natsSubscription*, natsMsg* m, void* closure) {
        auto in = copy(m);
        natsMsg_Destroy(m);
        static_cast<Hook*>(closure)->post_message(
            [in = std::move(in)](Impl& b) { (b.*Handle)(in); });
    }
    static void on_durable(natsConnection*, natsSubscription*, natsMsg* m, void* closure) {
        auto in = copy(m);
        in.durable.reset(m, &natsMsg_Destroy);
        static_cast<Hook*>(closure)->post_message(
            [in = std::move(in)](Impl& b) { b.import_durable(in); });
    }
    static void on_durable_refused(jsCtx*, jsPubAckErr*, void* closure) {
        static_cast<Hook*>(closure)->post([](Impl& b) { ++b.dropped; });
    }
    static void on_complete(void* closure) { static_cast<Hook*>(closure)->release(); }
    static void on_connected(natsConnection*, void* closure) {
        static_cast<Hook*>(closure)->post(
            [](Impl& b) { b.set_state("connected", "connected to "); });
    }
    static void on_disconnected(natsConnection*, void* closure) {
        static_cast<Hook*>(closure)->post(
            [](Impl& b) { b.set_state("reconnecting", "lost its NATS server, reconnecting"); });
    }
    static void on_reconnected(natsConnection*, void* closure) {
        auto* hook = static_cast<Hook*>(closure);
        ++hook->reconnects;
        hook->post([](Impl& b) { b.set_state("connected", "reconnected to "); });
    }
    // nats.c gives up on a connection only for good reasons (the server refused the
    // credentials): that reason is the bridge's error.
    static void on_closed(natsConnection* nc, void* closure) {
        auto* hook = static_cast<Hook*>(closure);
        const char* last = nullptr;
        std::string why;
        if (natsConnection_GetLastError(nc, &last) != NATS_OK && last)
            why = last;
        hook->post([why](Impl& b) {
            b.state = "closed";
            if (!why.empty()) {
                b.error = why;
                b.log("bridge " + b.config.name + ": closed: " + why);
            }
        });
        hook->release_connection();
    }
    static void on_error(natsConnection*, natsSubscription*, natsStatus s, void* closure) {
        std::string why = nats_error(s);
        static_cast<Hook*>(closure)->post([why](Impl& b) {
            b.error = why;
            b.log("bridge " + b.config.name + ": " + why);
        });
    }

    void set_state(const char* now, const std::string& what) {
        if (state == now)
            return;
        state = now;
        log("bridge " + config.name + ": " + what + (state == "connected" ? server() : ""));
    }

    std::string server() const {
        char url[256] = {};
        if (nc && natsConnection_GetConnectedUrl(nc, url, sizeof url) == NATS_OK)
            return url;
        return {};
    }

    void log(const std::string& line) {
        if (log_line)
            log_line(line);
    }

    asio::io_context& io;
    broker::Broker& broker;
    const daemon::NatsBridgeConfig config;
    std::function<void(const std::string&)> log_line;
    Hook* hook;
    natsOptions* opts = nullptr;
    natsConnection* nc = nullptr; // once connect_done() took it
    std::thread connector;
    std::mutex connect_mutex;
    natsConnection* connect_result = nullptr;
    std::shared_ptr<Client> client;
    std::vector<natsSubscription*> subs;               // imports and the reply inbox
    std::map<std::string, natsSubscription*> services; // local services served on NATS
    std::set<std::string> exported_services;           // local services on exported names
    std::string inbox;
    struct Pending {
        Pending(Responder r, asio::io_context& io) : responder(std::move(r)), timer(io) {}
        Responder responder;
        asio::steady_timer timer;
    };
    std::unordered_map<std::uint64_t, Pending> requests;
    std::uint64_t next_request = 1;
    jsCtx* js = nullptr;
    std::string consumer; // this busd's durable name
    std::thread jetstream;
    std::mutex durable_mutex;
    std::vector<natsSubscription*> durable_subs;
    std::set<std::string> types_answered, types_asked;
    std::unordered_map<std::uint64_t, std::string> type_requests; // look-ups on NATS, by id
    std::string state = "connecting", error;
    std::uint64_t msgs_in = 0, msgs_out = 0, bytes_in = 0, bytes_out = 0, dropped = 0,
                  requests_in = 0, requests_out = 0;
};

NatsBridge::NatsBridge(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {
    ++live_bridges;
}

NatsBridge::~NatsBridge() {
    impl_.reset();
    if (--live_bridges == 0) {
        // Bounded: busd stops whatever NATS does; nats.c is left to the exit if it is slower.
        if (nats_CloseAndWait(2000) == NATS_OK)
            for (auto* hook : orphans)
                hook->release_connection();
        orphans.clear();
    }
}

Result<std::unique_ptr<NatsBridge>> NatsBridge::start(asio::io_context& io, broker::Broker& broker,
                                                      daemon::NatsBridgeConfig config,
                                                      std::function<void(const std::string&)> log,
                                                      std::string* why) {
    // nats.c's threads post to busd's loop: an io_context made without the scheduler's lock
    // (BOOST_ASIO_CONCURRENCY_HINT_UNSAFE) would race with them and could lose the loop's own
    // work (busd then sleeps in pause() for good, deaf to SIGTERM).
    const int hint = asio::use_service<asio::detail::scheduler>(io).concurrency_hint();
    if (!BOOST_ASIO_CONCURRENCY_HINT_IS_LOCKING(SCHEDULER, hint)) {
        if (why)
            *why = "bridge " + config.name + ": busd's loop has no lock for nats.c's threads";
        return make_error_code(std::errc::invalid_argument);
    }
    auto impl = std::make_shared<Impl>(io, broker, std::move(config));
    impl->log_line = std::move(log);
    impl->hook->bridge = impl;
    std::string failed = impl->configure();
    if (failed.empty())
        failed = impl->attach();
    if (!failed.empty()) {
        if (why)
            *why = failed;
        return make_error_code(std::errc::invalid_argument);
    }
    impl->connect();
    return std::unique_ptr<NatsBridge>(new NatsBridge(std::move(impl)));
}

void NatsBridge::local_service(const std::string& name, bool served) {
    impl_->local_service(name, served);
}

v1::BridgeInfo NatsBridge::info() const {
    const Impl& b = *impl_;
    v1::BridgeInfo out;
    out.set_name(b.config.name);
    out.set_kind("nats");
    out.set_server(b.state == "connected" ? b.server() : std::string());
    out.set_state(b.state);
    out.set_error(b.error);
    out.set_msgs_in(b.msgs_in);
    out.set_msgs_out(b.msgs_out);
    out.set_bytes_in(b.bytes_in);
    out.set_bytes_out(b.bytes_out);
    out.set_buffered(b.nc && b.state != "connected"
                         ? static_cast<std::uint64_t>(std::max(0, natsConnection_Buffered(b.nc)))
                         : 0);
    out.set_dropped(b.dropped + b.hook->overflow);
    out.set_requests_in(b.requests_in);
    out.set_requests_out(b.requests_out);
    out.set_reconnects(b.hook->reconnects);
    for (const auto& p : b.config.exports)
        out.add_exports(p);
    for (const auto& p : b.config.imports)
        out.add_imports(p);
    for (const auto& p : b.config.durables)
        out.add_durables(p);
    return out;
}

} // namespace bus::bridge
