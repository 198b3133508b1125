// The broker: client registry, subscription trie, services, requests in flight, and the two
// transports (ZeroMQ ROUTER, unix:// channels) that feed them.
//
// Everything runs on one io_context thread. Inbound envelopes from either transport reach
// Impl::handle() as a parsed header plus the payload bytes in place (both transports carry
// the same bytes: a header with the payload field last, see frame::split). Outbound, the
// header is the broker's (it stamps `source`, never trusting the client's), serialized once
// per routed message, and the payload is copied unparsed behind it, once per recipient. Where a
// subject's publishes go is worked out on its first publish and kept until a subscription
// changes.
//
// A recipient that cannot take a message now (ZeroMQ's per-peer queue at its SNDHWM, or a
// channel over its byte bound) loses that message alone: it is counted and the client is told
// by a "slow_consumer" control message once it can take one again. The broker never waits for
// a client, so a stalled subscriber costs a publisher nothing.
#include "bus/broker.hpp"

#include "transport/sockets.hpp"
#include "transport/zmq_watch.hpp"
#include "bus/channel.hpp"
#include "bus/endpoint.hpp"
#include "bus/frame.hpp"
#include "bus/shm_queue.hpp"
#include "bus/subject.hpp"

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

#include <algorithm>
#include <charconv>
#include <random>
#include <set>
#include <unordered_map>

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

namespace bus::broker {
namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

constexpr const char* version = "0.1.0";
constexpr std::size_t max_subject_stats = 4096;
constexpr std::size_t max_routes = 4096; // subjects whose routes are cached
constexpr std::size_t max_queues_per_client = 256;
constexpr int zmq_batch = 256; // messages received per wake-up before yielding

std::int64_t now_unix_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string random_id() {
    std::random_device rd;
    std::uniform_int_distribution<std::uint64_t> dist;
    char buf[17];
    auto v = dist(rd);
    for (int i = 15; i >= 0; --i, v >>= 4)
        buf[i] = "0123456789abcdef"[v & 0xf];
    buf[16] = 0;
    return buf;
}

// A client-chosen name or queue group: printable ASCII, bounded.
bool clean_label(std::string_view s, std::size_t max) {
    if (s.size() > max)
        return false;
    return std::all_of(s.begin(), s.end(), [](char c) { return c > ' ' && c < 0x7f; });
}

bool is_sys(std::string_view subject) {
    return subject == "$sys" || subject.starts_with("$sys.");
}

// Appends protobuf fields to a serialized message (proto3: zero and empty fields are left out).
struct FieldWriter {
    std::string& out;

    // Most varints here (tags, sizes, small ids) are one byte; the rest are built aside and
    // appended at once, not pushed a byte at a time. Inlined: a call per byte written was 12%
    // of busd's instructions on a publish.
    [[gnu::always_inline]] void varint(std::uint64_t v) {
        if (v < 0x80) {
            out.push_back(static_cast<char>(v));
            return;
        }
        char bytes[10];
        std::size_t n = 0;
        for (; v >= 0x80; v >>= 7)
            bytes[n++] = static_cast<char>(v | 0x80);
        bytes[n++] = static_cast<char>(v);
        out.append(bytes, n);
    }
    void tag(int field, int wire_type) {
        varint(static_cast<std::uint64_t>(field << 3 | wire_type));
    }
    void varint_field(int field, std::uint64_t v) {
        if (v != 0) {
            tag(field, 0);
            varint(v);
        }
    }
    void bytes_field(int field, std::string_view bytes) {
        if (!bytes.empty()) {
            tag(field, 2);
            varint(bytes.size());
            out.append(bytes);
        }
    }
    // A bytes field's size, for a field number below 16.
    static std::size_t bytes_field_size(std::string_view bytes) {
        std::size_t n = bytes.size(), size = 2;
        while (n >= 0x80) {
            n >>= 7;
            ++size;
        }
        return bytes.empty() ? 0 : size + bytes.size();
    }
};

} // namespace

// A message in a ZeroMQ client's batch, and what busd must undo if the batch is refused (the
// client's queue is full): the counts of a delivery, a slow_consumer notice's report, a
// request in flight.
struct Queued {
    bool delivery = false;             // counted as sent to the client (deliver())
    std::uint64_t told = 0;            // a slow_consumer notice: the drops it reported
    v1::SubjectStats* stats = nullptr; // a publish: its subject's counters
    std::uint64_t request = 0;         // a request: its broker id
    std::size_t bytes = 0;
};

struct Broker::Impl {
    // One ROUTER per ZeroMQ transport: ipc:// (peers known by kernel credentials) and tcp://
    // (peers known by CURVE: a socket is a CURVE server for all its connections or none).
    struct ZmqServer {
        bool tcp = false;
        std::unique_ptr<zmq::socket_t> router;
        std::unique_ptr<detail::ZmqWatch> watch;
        std::unique_ptr<zmq::socket_t> monitor;
        std::unique_ptr<detail::ZmqWatch> monitor_watch;
    };
    struct Client {
        std::uint64_t num = 0;
        std::string id;
        bool zmq = false;
        std::string routing_id;           // zmq
        ZmqServer* server = nullptr;      // zmq: which ROUTER it came through
        std::shared_ptr<Channel> channel; // unix
        std::string name;
        std::uint32_t pid = 0, uid = 0, gid = 0;
        std::int64_t connected_ns = 0;
        Clock::time_point last_seen;
        bool allowed = true;
        bool announced = false;
        const AccessRule* rule = nullptr; // restrictions, if a rule names it
        std::uint64_t msgs_in = 0, msgs_out = 0, bytes_in = 0, bytes_out = 0, dropped = 0;
        std::uint64_t unreported_drops = 0; // told with the next message it can take
        // ZeroMQ: what this loop turn sends it, one batch of frames (see flush_zmq)
        std::string batch;
        std::vector<Queued> batch_items;
        bool batch_listed = false; // in Impl::unflushed
        struct Sub {
            std::string pattern, queue;
        };
        std::unordered_map<std::uint64_t, Sub> subs;
        std::set<std::string> services;
        std::set<std::string> queues; // shared-memory queues it announced
    };
    struct SubRef {
        std::uint64_t client;
        std::uint64_t sid;
        std::string queue;
        bool operator==(const SubRef& o) const { return client == o.client && sid == o.sid; }
    };
    struct Service {
        std::vector<std::uint64_t> instances;
        std::size_t next = 0;
        std::uint64_t requests = 0;
    };
    struct InFlight {
        std::uint64_t requester, server, client_request_id;
        std::int64_t deadline_ns;
    };

    Impl(asio::io_context& io_, Options options_)
        : io(io_), options(std::move(options_)), heartbeat_timer(io_), broker_id(random_id()),
          started_ns(now_unix_ns()) {}

    asio::io_context& io;
    Options options;
    std::vector<std::string> endpoints;
    std::vector<std::pair<std::string, Broker::SysHandler>> sys_handlers; // on_sys_request
    asio::steady_timer heartbeat_timer;
    std::string broker_id;
    std::int64_t started_ns;

    // transports
    zmq::context_t zmq_context{1};
    std::unique_ptr<ZmqServer> ipc_server, tcp_server;
    std::unique_ptr<asio::local::stream_protocol::acceptor> acceptor;
    std::vector<std::string> unlink_on_exit;

    // state
    std::uint64_t next_client = 1;
    std::uint64_t next_request = 1;
    std::unordered_map<std::uint64_t, std::unique_ptr<Client>> clients;
    std::unordered_map<std::string, std::uint64_t> by_routing_id;
    SubjectTrie<SubRef> subscriptions;
    std::unordered_map<std::string, std::uint64_t> queue_turns; // round-robin per queue group
    std::unordered_map<std::string, Service> services;
    // Requests routed and not yet answered. Only here: a client that goes away is looked up by
    // a scan (rare), so routing a request touches one map, not three.
    std::unordered_map<std::uint64_t, InFlight> in_flight;
    std::unordered_map<std::string, v1::SubjectStats> subject_stats;
    struct Type {
        std::string descriptor_set; // serialized FileDescriptorSet
        std::string registered_by;
    };
    std::unordered_map<std::string, Type> types;
    // `bus monitor`: who gets a copy of everything routed. Empty in the common case, which
    // then costs routing one test of emptiness per message.
    struct MonitorRef {
        std::uint64_t client, sid;
        std::string pattern;
    };
    std::vector<MonitorRef> monitors;
    std::uint64_t msgs_routed = 0, dropped_total = 0;
    v1::Envelope out;         // reused header of the broker's own answers
    v1::Envelope zmq_in;      // reused inbound header (ZeroMQ; a channel keeps its own)
    std::string fanout_head;  // a publish's outbound header, serialized once for all recipients
    std::string header_bytes; // any other outbound header, serialized

    // Where a subject's publishes go, worked out on its first publish (subject check, trie
    // walk, grouping, client look-up) and kept until any subscription changes. A client that
    // goes away takes its subscriptions with it, which drops every route: a Target's client
    // lives as long as the route.
    struct Target {
        Client* client;
        std::uint64_t sid;
    };
    struct Route {
        std::vector<Target> plain;               // each gets every message
        std::vector<std::vector<Target>> groups; // each queue group gets it once...
        std::vector<std::uint64_t*> turns;       // ...round-robin (into queue_turns)
        v1::SubjectStats* stats = nullptr;
    };
    std::unordered_map<std::string, Route> routes;
    std::vector<std::uint64_t> unflushed; // ZeroMQ clients with a batch to send

    // --- set-up -------------------------------------------------------------------------

    std::error_code bind_all(std::string* failed) {
        if (options.endpoints.empty()) {
            auto ipc = default_endpoint();
            if (!ipc)
                return ipc.error();
            auto unix = default_unix_endpoint();
            if (!unix)
                return unix.error();
            options.endpoints = {ipc.value(), unix.value()};
        }
        for (const auto& text : options.endpoints) {
            if (failed)
                *failed = text;
            auto endpoint = parse_endpoint(text);
            if (!endpoint)
                return endpoint.error();
            std::error_code ec;
            switch (endpoint.value().scheme) {
            case Endpoint::Scheme::ipc:
                ec = bind_zmq(endpoint.value());
                break;
            case Endpoint::Scheme::unix:
                ec = bind_unix(endpoint.value().address);
                break;
            case Endpoint::Scheme::tcp:
                ec = bind_zmq(endpoint.value());
                break;
            }
            if (ec)
                return ec;
            endpoints.push_back(text);
        }
        return {};
    }

    std::error_code bind_zmq(const Endpoint& endpoint) {
        const bool tcp = endpoint.scheme == Endpoint::Scheme::tcp;
        auto& server = tcp ? tcp_server : ipc_server;
        if (server)
            return make_error_code(errc::bad_endpoint); // one endpoint per transport
        if (tcp && (options.curve_secret_key.size() != 40 || options.curve_public_key.size() != 40))
            return make_error_code(errc::forbidden); // tcp:// only with CURVE keys
        if (!tcp) {
            if (auto ec = detail::claim_socket_path(endpoint.address))
                return ec;
        }
        server = std::make_unique<ZmqServer>();
        server->tcp = tcp;
        try {
            auto& router = server->router;
            router = std::make_unique<zmq::socket_t>(zmq_context, zmq::socket_type::router);
            router->set(zmq::sockopt::router_mandatory, 1);
            // ZeroMQ counts messages, which are batches here: as many as client_queue_bytes
            // holds in full batches, so the bound stays in bytes too.
            const auto batches = static_cast<int>(std::clamp<std::size_t>(
                options.limits.client_queue_bytes / detail::zmq_batch_bytes, 16,
                static_cast<std::size_t>(options.limits.client_queue_messages)));
            router->set(zmq::sockopt::sndhwm, batches);
            router->set(zmq::sockopt::rcvhwm, batches);
            router->set(zmq::sockopt::maxmsgsize,
                        static_cast<int64_t>(options.limits.max_message_size + 64 * 1024 +
                                             frame::header_size));
            router->set(zmq::sockopt::linger, 0);
            if (tcp) {
                // Clients must know the server's public key; without it the handshake fails.
                router->set(zmq::sockopt::curve_server, 1);
                router->set(zmq::sockopt::curve_secretkey, options.curve_secret_key);
                router->set(zmq::sockopt::curve_publickey, options.curve_public_key);
                router->bind(endpoint.str());
            } else {
                const mode_t old = ::umask(0177); // the socket file is created 0600
                try {
                    router->bind(endpoint.str());
                } catch (...) {
                    ::umask(old);
                    throw;
                }
                ::umask(old);
                unlink_on_exit.push_back(endpoint.address);
            }
            // Disconnections, to find ZeroMQ clients that went away without a word.
            const std::string monitor_address =
                "inproc://busd-monitor-" + broker_id + (tcp ? "-tcp" : "-ipc");
            if (zmq_socket_monitor(router->handle(), monitor_address.c_str(),
                                   ZMQ_EVENT_DISCONNECTED) != 0)
                return last_error();
            server->monitor = std::make_unique<zmq::socket_t>(zmq_context, zmq::socket_type::pair);
            server->monitor->connect(monitor_address);
        } catch (const zmq::error_t& e) {
            server.reset();
            return {e.num(), std::system_category()};
        }
        ZmqServer* z = server.get();
        z->watch = std::make_unique<detail::ZmqWatch>(io, *z->router, [this, z] { read_zmq(*z); });
        z->monitor_watch =
            std::make_unique<detail::ZmqWatch>(io, *z->monitor, [this, z] { read_monitor(*z); });
        z->watch->start();
        z->monitor_watch->start();
        return {};
    }

    std::error_code bind_unix(const std::string& path) {
        if (acceptor)
            return make_error_code(errc::bad_endpoint);
        auto fd = detail::listen_unix(path);
        if (!fd)
            return fd.error();
        acceptor = std::make_unique<asio::local::stream_protocol::acceptor>(
            io, asio::local::stream_protocol(), fd.value().release());
        unlink_on_exit.push_back(path);
        accept();
        return {};
    }

    void accept() {
        acceptor->async_accept(
            [this](boost::system::error_code ec, asio::local::stream_protocol::socket socket) {
                if (ec == asio::error::operation_aborted)
                    return;
                if (!ec)
                    adopt_unix(UniqueFd(socket.release()));
                accept();
            });
    }

    const AccessRule* rule_for(std::uint32_t uid, std::uint32_t gid) const {
        if (uid == ::getuid())
            return nullptr;
        for (const auto& rule : options.rules)
            if ((rule.uid && *rule.uid == uid) || (rule.gid && *rule.gid == gid))
                return &rule;
        return nullptr;
    }

    // May publish (or request) `subject`.
    static bool may_publish(const Client& c, std::string_view subject) {
        if (!c.rule)
            return true;
        return std::any_of(c.rule->publish.begin(), c.rule->publish.end(),
                           [&](const std::string& p) { return subject_matches(p, subject); });
    }

    // May subscribe to (or serve) everything `pattern` matches.
    static bool may_subscribe(const Client& c, std::string_view pattern) {
        if (!c.rule)
            return true;
        return std::any_of(c.rule->subscribe.begin(), c.rule->subscribe.end(),
                           [&](const std::string& a) { return pattern_covers(a, pattern); });
    }

    bool allowed(std::uint32_t uid, std::uint32_t gid) const {
        if (uid == ::getuid() || rule_for(uid, gid))
            return true;
        const auto& u = options.allowed_uids;
        const auto& g = options.allowed_gids;
        return std::find(u.begin(), u.end(), uid) != u.end() ||
               std::find(g.begin(), g.end(), gid) != g.end();
    }

    // `pid`: the client's, when the kernel's peer credentials name another process (a
    // socketpair's name its creator: busd for the link it gives a cluster worker).
    void adopt_unix(UniqueFd fd, pid_t pid = 0) {
        ::fcntl(fd.get(), F_SETFD, FD_CLOEXEC);
        ChannelOptions channel_options;
        channel_options.max_message_size = options.limits.max_message_size;
        channel_options.high_water_mark = options.limits.client_queue_bytes;
        auto channel = Channel::adopt(io, std::move(fd), channel_options);
        if (channel)
            adopt_channel(std::move(channel).value(), pid);
    }

    void adopt_channel(std::shared_ptr<Channel> channel, pid_t pid = 0) {
        ucred cred{};
        socklen_t len = sizeof cred;
        if (::getsockopt(channel->native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
            !allowed(cred.uid, cred.gid)) {
            channel->disconnect(); // not ours to serve
            return;
        }
        auto& c = add_client(false);
        c.pid = static_cast<std::uint32_t>(pid ? pid : cred.pid);
        c.uid = cred.uid;
        c.gid = cred.gid;
        c.rule = rule_for(c.uid, c.gid);
        c.channel = std::move(channel);
        const auto num = c.num;
        c.channel->on_envelope([this, num](v1::Envelope& header, std::string_view payload,
                                           std::vector<UniqueFd>& fds) {
            if (auto* client = find(num))
                handle(*client, header, payload, fds);
        });
        c.channel->on_disconnect([this, num](std::error_code) { remove_client(num); });
    }

    Client& add_client(bool zmq) {
        auto c = std::make_unique<Client>();
        c->num = next_client++;
        c->id = "c" + std::to_string(c->num);
        c->zmq = zmq;
        c->connected_ns = now_unix_ns();
        c->last_seen = Clock::now();
        auto& ref = *c;
        clients.emplace(ref.num, std::move(c));
        return ref;
    }

    Client* find(std::uint64_t num) {
        auto it = clients.find(num);
        return it == clients.end() ? nullptr : it->second.get();
    }

    Client* find_by_id(std::string_view id) {
        std::uint64_t num = 0;
        if (id.size() < 2 || id[0] != 'c')
            return nullptr;
        auto [end, ec] = std::from_chars(id.data() + 1, id.data() + id.size(), num);
        if (ec != std::errc() || end != id.data() + id.size())
            return nullptr;
        return find(num);
    }

    // --- ZeroMQ input -------------------------------------------------------------------

    void read_zmq(ZmqServer& server) {
        auto& router = server.router;
        for (int i = 0; i < zmq_batch; ++i) {
            zmq::message_t identity, body;
            try {
                if (!router->recv(identity, zmq::recv_flags::dontwait))
                    return;
                // Expected: [identity][one or more channel frames]. Anything else is malformed;
                // the rest of it is drained so the next message starts clean.
                bool ok = identity.more() && router->recv(body, zmq::recv_flags::dontwait);
                if (ok && body.more()) {
                    ok = false;
                    zmq::message_t extra;
                    while (router->get(zmq::sockopt::rcvmore) &&
                           router->recv(extra, zmq::recv_flags::dontwait)) {
                    }
                }
                Client& c = zmq_client(server, identity, body);
                c.last_seen = Clock::now();
                if (!c.allowed)
                    continue;
                if (!ok) {
                    send_error(c, 0, errc::bad_frame, "malformed message");
                    continue;
                }
                read_frames(c.num, body.to_string_view());
            } catch (const zmq::error_t&) {
                return;
            }
        }
    }

    // The frames of one ZeroMQ message, in order; a malformed one ends the message.
    void read_frames(std::uint64_t num, std::string_view frames) {
        std::vector<UniqueFd> no_fds;
        while (!frames.empty()) {
            Client* c = find(num);
            if (!c)
                return;
            auto body = frame::take_frame(frames, options.limits.max_message_size + 64 * 1024);
            auto payload = body ? frame::split(body.value(), zmq_in)
                                : Result<std::string_view>(errc::bad_frame);
            if (!payload || !zmq_in.payload().empty())
                return send_error(*c, 0, errc::bad_frame, "malformed message");
            if (zmq_in.fd_count() != 0) {
                send_error(*c, zmq_in.id(), errc::fds_not_supported,
                           "file descriptors need a unix:// link");
                continue;
            }
            handle(*c, zmq_in, payload.value(), no_fds);
        }
    }

    // `first` is a frame that came from the peer: its metadata holds the peer's credentials
    // (the identity frame is made by the ROUTER and carries none).
    Client& zmq_client(ZmqServer& server, const zmq::message_t& identity,
                       const zmq::message_t& first) {
        std::string key = (server.tcp ? "t" : "i") + std::string(identity.to_string_view());
        if (auto it = by_routing_id.find(key); it != by_routing_id.end())
            return *clients.at(it->second);
        auto& c = add_client(true);
        c.server = &server;
        c.routing_id = std::string(identity.to_string_view());
        by_routing_id.emplace(std::move(key), c.num);
        if (server.tcp) {
            // Authenticated by CURVE (it knew the server's key); there is no uid to check.
            c.uid = c.gid = ~0u;
            c.allowed = true;
            return c;
        }
        // libzmq reports an ipc peer's kernel credentials as "localhost:uid:gid:pid". Without
        // them (a malformed first message) the peer is not let in.
        bool credentials = false;
        if (const char* peer = zmq_msg_gets(first.handle(), "Peer-Address")) {
            std::string_view p(peer);
            std::uint32_t fields[3] = {};
            for (int f = 2; f >= 0; --f) {
                const auto colon = p.rfind(':');
                if (colon == std::string_view::npos)
                    break;
                std::from_chars(p.data() + colon + 1, p.data() + p.size(), fields[f]);
                p = p.substr(0, colon);
            }
            c.uid = fields[0];
            c.gid = fields[1];
            c.pid = fields[2];
            credentials = p.size() > 0 || fields[2] != 0;
        }
        c.allowed = credentials && allowed(c.uid, c.gid);
        c.rule = rule_for(c.uid, c.gid);
        return c;
    }

    void read_monitor(ZmqServer& server) {
        auto& monitor = server.monitor;
        // Some ZeroMQ peer disconnected; ROUTER does not say which. Ping every ZeroMQ client:
        // with ROUTER_MANDATORY, a send to a gone peer fails with EHOSTUNREACH at once.
        zmq::message_t event;
        bool any = false;
        while (monitor->recv(event, zmq::recv_flags::dontwait)) {
            if (!event.more())
                any = true;
        }
        if (!any)
            return;
        std::vector<std::uint64_t> zmq_clients;
        for (auto& [num, c] : clients)
            if (c->zmq && c->server == &server)
                zmq_clients.push_back(num);
        for (auto num : zmq_clients)
            if (auto* c = find(num))
                send_control(*c, "ping", nullptr, 0);
    }

    // --- routing ------------------------------------------------------------------------

    void handle(Client& c, v1::Envelope& in, std::string_view payload, std::vector<UniqueFd>& fds) {
        ++c.msgs_in;
        c.bytes_in += payload.size();
        if (payload.size() > options.limits.max_message_size)
            return send_error(c, in.id(), errc::message_too_large, "");
        if (!monitors.empty() && in.kind() != v1::KIND_CONTROL)
            mirror(c, in, in.kind(), payload);
        switch (in.kind()) {
        case v1::KIND_CONTROL:
            return handle_control(c, in, payload);
        case v1::KIND_PUBLISH:
            return publish(c, in, payload, fds);
        case v1::KIND_REQUEST:
            return request(c, in, payload, fds);
        case v1::KIND_REPLY:
        case v1::KIND_ERROR:
            return reply(c, in, payload, fds);
        case v1::KIND_DIRECT:
            return direct(c, in, payload, fds);
        default:
            return send_error(c, in.id(), errc::bad_frame, "unknown kind");
        }
    }

    void handle_control(Client& c, const v1::Envelope& in, std::string_view body) {
        const auto& op = in.subject();
        if (op == "ping" || op == "hello") {
            if (op == "hello") {
                v1::Hello hello;
                if (!hello.ParseFromArray(body.data(), static_cast<int>(body.size())) ||
                    !clean_label(hello.name(), 128))
                    return send_error(c, in.id(), errc::bad_frame, "bad hello");
                c.name = hello.name();
                if (!c.announced) {
                    c.announced = true; // once it has a name
                    announce(c, "$sys.client.connected");
                }
            }
            v1::Welcome welcome;
            welcome.set_client_id(c.id);
            welcome.set_broker_id(broker_id);
            welcome.set_version(version);
            welcome.set_heartbeat_ms(static_cast<std::uint32_t>(options.heartbeat.count()));
            return send_control(c, op == "hello" ? "welcome" : "pong", &welcome, in.id());
        }
        if (op == "pong")
            return;
        if (op == "sub") {
            v1::Subscribe sub;
            if (!sub.ParseFromArray(body.data(), static_cast<int>(body.size())))
                return send_error(c, in.id(), errc::bad_frame, "bad subscribe");
            if (!valid_pattern(sub.pattern()) || !clean_label(sub.queue_group(), 128))
                return send_error(c, sub.sid(), errc::invalid_subject, sub.pattern());
            if (!may_subscribe(c, sub.pattern()))
                return send_error(c, sub.sid(), errc::forbidden, sub.pattern());
            if (c.subs.size() >= options.limits.max_subscriptions || c.subs.count(sub.sid()))
                return send_error(c, sub.sid(), errc::forbidden, "subscription limit or id reused");
            subscriptions.insert(sub.pattern(), SubRef{c.num, sub.sid(), sub.queue_group()});
            routes.clear();
            c.subs.emplace(sub.sid(), Client::Sub{sub.pattern(), sub.queue_group()});
            return;
        }
        if (op == "unsub") {
            v1::Unsubscribe unsub;
            if (!unsub.ParseFromArray(body.data(), static_cast<int>(body.size())))
                return send_error(c, in.id(), errc::bad_frame, "bad unsubscribe");
            if (auto it = c.subs.find(unsub.sid()); it != c.subs.end()) {
                subscriptions.erase(it->second.pattern, SubRef{c.num, unsub.sid(), {}});
                routes.clear();
                c.subs.erase(it);
            }
            return;
        }
        if (op == "register_type")
            return register_type(c, in, body);
        if (op == "queue") {
            v1::QueueAnnounce queue;
            if (!queue.ParseFromArray(body.data(), static_cast<int>(body.size())) ||
                !shm::valid_name(queue.name()))
                return send_error(c, in.id(), errc::bad_frame, "bad queue announcement");
            if (c.queues.size() >= max_queues_per_client)
                return send_error(c, in.id(), errc::forbidden, "queue limit");
            c.queues.insert(queue.name());
            return;
        }
        if (op == "monitor" || op == "unmonitor")
            return monitor_control(c, op, in, body);
        if (op == "serve" || op == "unserve") {
            v1::Serve serve;
            if (!serve.ParseFromArray(body.data(), static_cast<int>(body.size())))
                return send_error(c, in.id(), errc::bad_frame, "bad serve");
            const std::string& name = serve.service();
            if (!valid_subject(name) || is_sys(name))
                return send_error(c, in.id(), errc::invalid_subject, name);
            if (!may_subscribe(c, name))
                return send_error(c, in.id(), errc::forbidden, name);
            if (op == "serve") {
                if (c.services.size() >= options.limits.max_services)
                    return send_error(c, in.id(), errc::forbidden, "service limit");
                if (c.services.insert(name).second)
                    services[name].instances.push_back(c.num);
            } else if (c.services.erase(name)) {
                drop_instance(name, c.num);
            }
            return;
        }
        send_error(c, in.id(), errc::bad_frame, "unknown control operation");
    }

    // A client's description of a type it sends: kept if it is a consistent set of files that
    // defines the type it names. The newest registration of a name wins (types evolve).
    void register_type(Client& c, const v1::Envelope& in, std::string_view body) {
        const std::string_view url = in.type_url();
        const std::string name(url.substr(
            url.starts_with(frame::type_url_prefix) ? frame::type_url_prefix.size() : 0));
        if (body.size() > options.limits.max_type_descriptor_size)
            return send_error(c, in.id(), errc::message_too_large, "type descriptor");
        if (!types.count(name) && types.size() >= options.limits.max_types)
            return send_error(c, in.id(), errc::forbidden, "type registry full");
        google::protobuf::FileDescriptorSet set;
        if (!set.ParseFromArray(body.data(), static_cast<int>(body.size())))
            return send_error(c, in.id(), errc::bad_frame, "not a FileDescriptorSet");
        google::protobuf::DescriptorPool pool;
        for (const auto& file : set.file())
            if (!pool.BuildFile(file))
                return send_error(c, in.id(), errc::bad_frame, "inconsistent descriptors");
        if (!pool.FindMessageTypeByName(name))
            return send_error(c, in.id(), errc::bad_frame, "the set does not define " + name);
        types[name] = Type{std::string(body), c.id};
    }

    // The header every delivery starts from, serialized into `out`: what the recipient may see
    // of the sender's, stamped with the sender's id. Written field by field rather than through
    // an Envelope (copying the strings in and serializing them out again was a third of what
    // busd spent on a publish); callers append the fields that differ per delivery.
    static std::string& outbound(std::string& out, const Client& from, const v1::Envelope& in,
                                 v1::Kind kind) {
        out.clear();
        FieldWriter w{out};
        w.varint_field(1, static_cast<std::uint64_t>(kind));
        w.bytes_field(2, in.subject());
        w.bytes_field(3, in.type_url());
        w.bytes_field(8, from.id);
        w.varint_field(9, static_cast<std::uint64_t>(in.deadline_unix_ns()));
        for (const auto& h : in.headers()) {
            w.tag(10, 2);
            w.varint(FieldWriter::bytes_field_size(h.key()) +
                     FieldWriter::bytes_field_size(h.value()));
            w.bytes_field(1, h.key());
            w.bytes_field(2, h.value());
        }
        return out;
    }

    v1::SubjectStats& stats_for(const std::string& subject) {
        auto it = subject_stats.find(subject);
        if (it == subject_stats.end()) {
            if (subject_stats.size() >= max_subject_stats)
                it = subject_stats.try_emplace("(other)").first;
            else
                it = subject_stats.try_emplace(subject).first;
            it->second.set_subject(it->first);
        }
        return it->second;
    }

    static void count(v1::SubjectStats& s, std::size_t bytes, bool dropped) {
        if (dropped) {
            s.set_dropped(s.dropped() + 1);
        } else {
            s.set_msgs(s.msgs() + 1);
            s.set_bytes(s.bytes() + bytes);
        }
    }

    void publish(Client& c, const v1::Envelope& in, std::string_view payload,
                 std::vector<UniqueFd>& fds) {
        if (is_sys(in.subject()))
            return send_error(c, in.id(), errc::forbidden, "$sys is the broker's");
        if (!may_publish(c, in.subject()))
            return send_error(c, in.id(), errc::forbidden, in.subject());
        if (!fds.empty())
            return send_error(c, in.id(), errc::fds_not_supported,
                              "file descriptors go to one receiver: use a request or send_to");
        Route* route = route_for(in.subject());
        if (!route)
            return send_error(c, in.id(), errc::invalid_subject, in.subject());
        fan_out(c, in, payload, *route);
    }

    // The cached route of a valid subject; nullptr for an invalid one.
    Route* route_for(const std::string& subject) {
        if (auto it = routes.find(subject); it != routes.end())
            return &it->second;
        if (!valid_subject(subject))
            return nullptr;
        if (routes.size() >= max_routes)
            routes.clear();
        Route& route = routes[subject];
        route.stats = &stats_for(subject);
        std::unordered_map<std::string_view, std::size_t> group_index;
        subscriptions.match(subject, [&](const SubRef& s) {
            Client* c = find(s.client);
            if (!c)
                return;
            if (s.queue.empty())
                return route.plain.push_back({c, s.sid});
            auto [it, added] = group_index.try_emplace(s.queue, route.groups.size());
            if (added) {
                route.groups.emplace_back();
                route.turns.push_back(&queue_turns[s.queue]);
            }
            route.groups[it->second].push_back({c, s.sid});
        });
        return &route;
    }

    // Plain subscriptions all get it; each queue group gets it once, round-robin. The header is
    // serialized once; each recipient's copy differs only by its subscription id, appended.
    void fan_out(const Client& from, const v1::Envelope& in, std::string_view payload,
                 Route& route) {
        outbound(fanout_head, from, in, v1::KIND_PUBLISH);
        const std::size_t base = fanout_head.size();
        auto deliver_to = [&](const Target& t) {
            fanout_head.resize(base);
            FieldWriter{fanout_head}.varint_field(12, t.sid);
            const bool sent =
                deliver(*t.client, fanout_head, payload, {}, Queued{.stats = route.stats});
            count(*route.stats, payload.size(), !sent);
        };
        // A delivery never removes a client on the spot (a gone ZeroMQ peer is removed from a
        // posted handler, a channel reports its end from the loop), so the route stays valid.
        for (const Target& t : route.plain)
            deliver_to(t);
        for (std::size_t g = 0; g < route.groups.size(); ++g) {
            const auto& members = route.groups[g];
            deliver_to(members[(*route.turns[g])++ % members.size()]);
        }
        ++msgs_routed;
    }

    void request(Client& c, const v1::Envelope& in, std::string_view payload,
                 std::vector<UniqueFd>& fds) {
        if (is_sys(in.subject()))
            return sys_request(c, in, payload);
        // A name someone serves was validated when it was served.
        auto it = services.find(in.subject());
        if (it == services.end() && !valid_subject(in.subject()))
            return send_error(c, in.id(), errc::invalid_subject, in.subject());
        if (!may_publish(c, in.subject()))
            return send_error(c, in.id(), errc::forbidden, in.subject());
        if (it == services.end() || it->second.instances.empty())
            return send_error(c, in.id(), errc::no_responders, in.subject());
        auto& service = it->second;
        Client* server = find(service.instances[service.next++ % service.instances.size()]);
        if (!server)
            return send_error(c, in.id(), errc::no_responders, in.subject());
        if (!fds.empty() && server->zmq)
            return send_error(c, in.id(), errc::fds_not_supported,
                              "the serving instance has no unix:// link");
        const std::uint64_t id = next_request++;
        FieldWriter w{outbound(header_bytes, c, in, v1::KIND_REQUEST)};
        w.varint_field(5, id);
        w.varint_field(11, fds.size());
        if (!deliver(*server, header_bytes, payload, std::move(fds), Queued{.request = id}))
            return send_error(c, in.id(), errc::service_lost, "instance overloaded");
        ++service.requests;
        in_flight.emplace(id, InFlight{c.num, server->num, in.id(), in.deadline_unix_ns()});
        ++msgs_routed;
    }

    void reply(Client& c, const v1::Envelope& in, std::string_view payload,
               std::vector<UniqueFd>& fds) {
        auto it = in_flight.find(in.correlation_id());
        if (it == in_flight.end() || it->second.server != c.num)
            return; // late (the requester is gone or timed out) or not this client's to answer
        const InFlight f = it->second;
        in_flight.erase(it);
        Client* requester = find(f.requester);
        if (!requester)
            return;
        if (!fds.empty() && requester->zmq)
            return send_error(*requester, f.client_request_id, errc::fds_not_supported,
                              "the reply carried file descriptors");
        FieldWriter w{outbound(header_bytes, c, in, in.kind())};
        w.varint_field(6, f.client_request_id);
        w.varint_field(11, fds.size());
        deliver(*requester, header_bytes, payload, std::move(fds));
        ++msgs_routed;
    }

    void direct(Client& c, const v1::Envelope& in, std::string_view payload,
                std::vector<UniqueFd>& fds) {
        Client* to = find_by_id(in.subject());
        if (!to || !to->allowed)
            return send_error(c, in.id(), errc::no_such_client, in.subject());
        if (!fds.empty() && to->zmq)
            return send_error(c, in.id(), errc::fds_not_supported,
                              "the receiver has no unix:// link");
        FieldWriter w{outbound(header_bytes, c, in, v1::KIND_DIRECT)};
        w.varint_field(5, in.id());
        w.varint_field(11, fds.size());
        deliver(*to, header_bytes, payload, std::move(fds));
        ++msgs_routed;
    }

    // --- $sys ---------------------------------------------------------------------------

    v1::ClientInfo info(const Client& c) const {
        v1::ClientInfo i;
        i.set_id(c.id);
        i.set_name(c.name);
        i.set_pid(c.pid);
        i.set_uid(c.uid);
        i.set_gid(c.gid);
        i.set_transport(!c.zmq ? "unix" : c.server->tcp ? "tcp" : "ipc");
        i.set_msgs_in(c.msgs_in);
        i.set_msgs_out(c.msgs_out);
        i.set_bytes_in(c.bytes_in);
        i.set_bytes_out(c.bytes_out);
        i.set_dropped(c.dropped);
        i.set_subscriptions(static_cast<std::uint32_t>(c.subs.size()));
        i.set_connected_unix_ns(c.connected_ns);
        if (c.channel)
            i.set_queued(c.channel->queued_bytes());
        return i;
    }

    // Read from the queue's segment header, as `bus shm ls` does; the records stay where they
    // are.
    static v1::QueueInfo queue_info(const std::string& name, const std::string& client_id) {
        v1::QueueInfo q;
        q.set_name(name);
        q.set_client_id(client_id);
        auto found = shm::inspect(name);
        if (!found) {
            q.set_error(found.error().message());
            return q;
        }
        const auto& i = found.value();
        if (i.error) {
            q.set_error(i.error.message());
            return q;
        }
        q.set_mode(i.mode == shm::Mode::mpsc ? "mpsc" : "spsc");
        q.set_capacity(i.stats.capacity);
        q.set_depth_bytes(i.stats.depth_bytes);
        q.set_depth_records(i.stats.depth_records);
        q.set_produced(i.stats.produced);
        q.set_consumed(i.stats.consumed);
        q.set_skipped(i.stats.skipped);
        q.set_owner_pid(static_cast<std::uint32_t>(i.owner_pid));
        q.set_owner_alive(i.owner_alive);
        q.set_producers(static_cast<std::uint32_t>(i.producers));
        q.set_consumer(i.consumer);
        return q;
    }

    v1::BrokerStats make_stats() const {
        v1::BrokerStats s;
        s.set_version(version);
        s.set_broker_id(broker_id);
        s.set_started_unix_ns(started_ns);
        for (const auto& e : endpoints)
            s.add_endpoints(e);
        s.set_clients(static_cast<std::uint32_t>(clients.size()));
        s.set_msgs_routed(msgs_routed);
        s.set_dropped(dropped_total);
        for (const auto& [name, stats] : subject_stats)
            *s.add_subjects() = stats;
        return s;
    }

    void sys_request(Client& c, const v1::Envelope& in, std::string_view payload) {
        const auto& what = in.subject();
        std::unique_ptr<google::protobuf::Message> answer;
        if (what == "$sys.clients") {
            auto list = std::make_unique<v1::ClientList>();
            for (const auto& [num, client] : clients)
                if (client->allowed)
                    *list->add_clients() = info(*client);
            answer = std::move(list);
        } else if (what == "$sys.subscriptions") {
            auto list = std::make_unique<v1::SubscriptionList>();
            for (const auto& [num, client] : clients)
                for (const auto& [sid, sub] : client->subs) {
                    auto* s = list->add_subscriptions();
                    s->set_client_id(client->id);
                    s->set_sid(sid);
                    s->set_pattern(sub.pattern);
                    s->set_queue_group(sub.queue);
                }
            for (const auto& m : monitors) {
                auto* s = list->add_subscriptions();
                if (const Client* client = find(m.client))
                    s->set_client_id(client->id);
                s->set_sid(m.sid);
                s->set_pattern(m.pattern);
                s->set_monitor(true);
            }
            answer = std::move(list);
        } else if (what == "$sys.services") {
            auto list = std::make_unique<v1::ServiceList>();
            for (const auto& [name, service] : services) {
                auto* s = list->add_services();
                s->set_name(name);
                s->set_requests(service.requests);
                for (auto num : service.instances)
                    if (auto* instance = find(num))
                        s->add_instances(instance->id);
            }
            answer = std::move(list);
        } else if (what == "$sys.types") {
            auto list = std::make_unique<v1::TypeList>();
            for (const auto& [name, type] : types) {
                auto* t = list->add_types();
                t->set_name(name);
                t->set_registered_by(type.registered_by);
                t->set_descriptor_bytes(static_cast<std::uint32_t>(type.descriptor_set.size()));
            }
            answer = std::move(list);
        } else if (what == "$sys.type") {
            // The request's payload names the type; the answer is its FileDescriptorSet.
            auto it = types.find(std::string(payload));
            if (it == types.end())
                return send_error(c, in.id(), errc::no_responders, "unknown type");
            auto set = std::make_unique<google::protobuf::FileDescriptorSet>();
            set->ParseFromString(it->second.descriptor_set);
            answer = std::move(set);
        } else if (what == "$sys.queues") {
            auto list = std::make_unique<v1::QueueList>();
            for (const auto& [num, client] : clients)
                for (const auto& name : client->queues)
                    *list->add_queues() = queue_info(name, client->id);
            answer = std::move(list);
        } else if (what == "$sys.stats") {
            answer = std::make_unique<v1::BrokerStats>(make_stats());
        } else {
            auto h = std::find_if(sys_handlers.begin(), sys_handlers.end(),
                                  [&](const auto& e) { return what.starts_with(e.first); });
            if (h == sys_handlers.end())
                return send_error(c, in.id(), errc::no_responders, what);
            auto a = h->second(what, payload, c.uid);
            if (!a.reply)
                return send_error(c, in.id(), a.error, a.detail);
            answer = std::move(a.reply);
        }
        v1::Envelope& header = out;
        header.Clear();
        header.set_kind(v1::KIND_REPLY);
        header.set_subject(what);
        header.set_type_url(frame::type_url_of(*answer));
        header.set_source("busd");
        header.set_correlation_id(in.id());
        const std::string body = answer->SerializeAsString();
        deliver(c, header, body, {});
    }

    void announce(const Client& c, const char* subject) {
        if (subscriptions.size() == 0 && monitors.empty())
            return;
        publish_event(subject, info(c));
    }

    // Broker events go to whoever subscribed to them, like any publish, from source "busd".
    void publish_event(const std::string& subject, const google::protobuf::Message& event) {
        if (subscriptions.size() == 0 && monitors.empty())
            return;
        // Serialized only for someone: busd publishes a line per line its workers print.
        Route* route = route_for(subject);
        const bool subscribed = route && (!route->plain.empty() || !route->groups.empty());
        if (!subscribed && monitors.empty())
            return;
        v1::Envelope in;
        in.set_subject(subject);
        in.set_type_url(frame::type_url_of(event));
        const std::string body = event.SerializeAsString();
        Client broker_self;
        broker_self.id = "busd";
        if (subscribed)
            fan_out(broker_self, in, body, *route);
        if (!monitors.empty())
            mirror(broker_self, in, v1::KIND_EVENT, body);
    }

    // --- monitors -----------------------------------------------------------------------

    // CONTROL "monitor" / "unmonitor" (broker.proto): only busd's own uid and [access]
    // monitor_uids; tcp:// clients have no uid, so never.
    void monitor_control(Client& c, const std::string& op, const v1::Envelope& in,
                         std::string_view body) {
        if (op == "unmonitor") {
            v1::Unsubscribe unsub;
            if (!unsub.ParseFromArray(body.data(), static_cast<int>(body.size())))
                return send_error(c, in.id(), errc::bad_frame, "bad unmonitor");
            std::erase_if(monitors, [&](const MonitorRef& m) {
                return m.client == c.num && m.sid == unsub.sid();
            });
            return;
        }
        v1::Subscribe sub;
        if (!sub.ParseFromArray(body.data(), static_cast<int>(body.size())))
            return send_error(c, in.id(), errc::bad_frame, "bad monitor");
        if (!valid_pattern(sub.pattern()))
            return send_error(c, sub.sid(), errc::invalid_subject, sub.pattern());
        const auto& uids = options.monitor_uids;
        const bool may =
            !(c.zmq && c.server->tcp) &&
            (c.uid == ::getuid() || std::find(uids.begin(), uids.end(), c.uid) != uids.end());
        if (!may)
            return send_error(c, sub.sid(), errc::forbidden,
                              "monitoring is for busd's own uid and [access] monitor_uids");
        const auto mine = std::count_if(monitors.begin(), monitors.end(),
                                        [&](const MonitorRef& m) { return m.client == c.num; });
        if (mine >= 16)
            return send_error(c, sub.sid(), errc::forbidden, "monitor limit (16 per client)");
        monitors.push_back(MonitorRef{c.num, sub.sid(), sub.pattern()});
    }

    // A copy of a message for every monitor whose pattern matches its subject; replies and
    // errors (whose subject is not a routing subject) go to every monitor. The payload is
    // shared as on any delivery; a monitor that cannot keep up loses copies, counted as drops.
    void mirror(const Client& from, const v1::Envelope& in, v1::Kind kind,
                std::string_view payload) {
        v1::Envelope copy;
        copy.set_kind(v1::KIND_PUBLISH);
        copy.set_monitored_kind(kind);
        copy.set_subject(in.subject());
        copy.set_type_url(in.type_url());
        copy.set_source(from.id);
        copy.set_id(in.id());
        copy.set_correlation_id(in.correlation_id());
        copy.set_deadline_unix_ns(in.deadline_unix_ns());
        *copy.mutable_headers() = in.headers();
        const bool every = kind == v1::KIND_REPLY || kind == v1::KIND_ERROR;
        const bool routable = every || valid_subject(in.subject());
        for (std::size_t i = 0; i < monitors.size(); ++i) {
            const auto& m = monitors[i];
            if (!routable || (!every && !subject_matches(m.pattern, in.subject())))
                continue;
            if (Client* to = find(m.client)) {
                copy.set_subscription_id(m.sid);
                deliver(*to, copy, payload, {});
            }
        }
    }

    // --- output -------------------------------------------------------------------------

    // Sends to one client without ever waiting; false when its queue is full (the message is
    // dropped for it alone and counted) or it is gone. `header` is serialized, with an
    // fd_count equal to fds.size().
    bool deliver(Client& to, std::string_view header, std::string_view payload,
                 std::vector<UniqueFd> fds, Queued queued = {}) {
        if (to.unreported_drops && !report_drops(to))
            return drop(to);
        queued.delivery = true;
        if (!send_raw(to, header, payload, std::move(fds), queued))
            return drop(to);
        ++to.msgs_out;
        to.bytes_out += payload.size();
        return true;
    }

    bool deliver(Client& to, v1::Envelope& header, std::string_view payload,
                 std::vector<UniqueFd> fds) {
        header.set_fd_count(static_cast<std::uint32_t>(fds.size()));
        header.SerializeToString(&header_bytes);
        return deliver(to, header_bytes, payload, std::move(fds));
    }

    bool drop(Client& to) {
        ++to.dropped;
        ++to.unreported_drops;
        ++dropped_total;
        return false;
    }

    bool report_drops(Client& to) {
        // While a subscriber is behind this runs for every message it is dropped: a channel
        // that would refuse the notice is found out before the notice is built.
        if (!to.zmq && !channel_takes(to))
            return false;
        v1::SlowConsumer notice;
        notice.set_dropped(to.unreported_drops);
        v1::Envelope header;
        header.set_kind(v1::KIND_CONTROL);
        header.set_subject("slow_consumer");
        header.set_source("busd");
        // Its own buffer: this runs in the middle of deliveries that use the shared ones.
        const std::string head = header.SerializeAsString();
        if (!send_raw(to, head, notice.SerializeAsString(), {},
                      Queued{.told = to.unreported_drops}))
            return false;
        to.unreported_drops = 0;
        return true;
    }

    bool channel_takes(const Client& to) const {
        return to.channel->connected() &&
               to.channel->queued_bytes() < options.limits.client_queue_bytes;
    }

    // A unix:// client's channel takes the frame or refuses it now. A ZeroMQ client's frame
    // joins its batch for this loop turn, which flush_zmq() hands to ZeroMQ; a refusal then is
    // undone message by message (refused()).
    bool send_raw(Client& to, std::string_view header, std::string_view payload,
                  std::vector<UniqueFd> fds, Queued queued = {}) {
        if (!to.zmq) {
            if (!channel_takes(to))
                return false;
            to.channel->send_split(header, payload, std::move(fds));
            return true;
        }
        // A batch that would outgrow its size goes first; never with the frame being added, so
        // that a refusal finds the caller's bookkeeping (a request in flight) in place. A
        // refusal is undone only after the frame is added: its errors reuse the buffers that
        // `header` may point into.
        std::vector<Queued> undo;
        if (!to.batch.empty() &&
            to.batch.size() + header.size() + payload.size() + 16 > detail::zmq_batch_bytes)
            undo = hand_over(to);
        frame::append_split(to.batch, header, payload);
        queued.bytes = payload.size();
        to.batch_items.push_back(queued);
        for (const auto& q : undo)
            refused(to, q);
        if (!to.batch_listed) {
            to.batch_listed = true;
            if (unflushed.empty())
                asio::post(io, [this] { flush_all(); });
            unflushed.push_back(to.num);
        }
        return true;
    }

    void flush_all() {
        // A refusal sends errors, which may list more clients: by index, not iterator.
        for (std::size_t i = 0; i < unflushed.size(); ++i) {
            if (Client* c = find(unflushed[i])) {
                c->batch_listed = false;
                flush_zmq(*c);
            }
        }
        unflushed.clear();
    }

    void flush_zmq(Client& to) {
        for (const auto& q : hand_over(to))
            refused(to, q);
    }

    // Hands `to`'s batch to ZeroMQ. Refused (its queue is at SNDHWM), the batch's messages are
    // returned for the caller to undo.
    std::vector<Queued> hand_over(Client& to) {
        std::vector<Queued> items;
        if (to.batch.empty())
            return items;
        bool sent = false;
        try {
            zmq::message_t msg(to.batch.data(), to.batch.size());
            // ROUTER checks the peer's queue on the first part only: if that is accepted, the
            // other is too.
            auto& router = *to.server->router;
            if (router.send(zmq::buffer(to.routing_id),
                            zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
                router.send(msg, zmq::send_flags::none);
                to.server->watch->kick();
                sent = true;
            }
        } catch (const zmq::error_t& e) {
            if (e.num() == EHOSTUNREACH) {
                // Gone. Removing it here would pull the client out from under the caller.
                asio::post(io, [this, num = to.num] { remove_client(num); });
            }
        }
        to.batch.clear();
        if (sent)
            to.batch_items.clear(); // keeps its capacity for the next batch
        else
            items.swap(to.batch_items);
        return items;
    }

    // One message of a batch ZeroMQ refused: dropped for `to` alone, as if refused at once.
    void refused(Client& to, const Queued& q) {
        if (q.delivery) {
            drop(to);
            --to.msgs_out;
            to.bytes_out -= q.bytes;
        }
        to.unreported_drops += q.told;
        if (q.stats) {
            q.stats->set_msgs(q.stats->msgs() - 1);
            q.stats->set_bytes(q.stats->bytes() - q.bytes);
            q.stats->set_dropped(q.stats->dropped() + 1);
        }
        if (q.request) {
            auto f = in_flight.find(q.request);
            if (f == in_flight.end())
                return;
            const InFlight flight = f->second;
            in_flight.erase(f);
            if (Client* requester = find(flight.requester)) {
                send_error(*requester, flight.client_request_id, errc::service_lost,
                           "instance overloaded");
            }
        }
    }

    void send_control(Client& to, const char* op, const google::protobuf::Message* body,
                      std::uint64_t id) {
        v1::Envelope header;
        header.set_kind(v1::KIND_CONTROL);
        header.set_subject(op);
        header.set_source("busd");
        header.set_correlation_id(id);
        const std::string bytes = body ? body->SerializeAsString() : std::string();
        send_raw(to, header.SerializeAsString(), bytes, {});
    }

    void send_error(Client& to, std::uint64_t correlation_id, errc code, std::string_view detail) {
        v1::Envelope header;
        header.set_kind(v1::KIND_ERROR);
        header.set_subject(std::string(error_wire_name(code)));
        header.set_source("busd");
        header.set_correlation_id(correlation_id);
        auto* h = header.add_headers();
        h->set_key("detail");
        h->set_value(std::string(detail.substr(0, 256)));
        deliver(to, header, {}, {});
    }

    // --- leaving ------------------------------------------------------------------------

    void drop_instance(const std::string& name, std::uint64_t num) {
        auto it = services.find(name);
        if (it == services.end())
            return;
        auto& v = it->second.instances;
        v.erase(std::remove(v.begin(), v.end(), num), v.end());
        if (v.empty())
            services.erase(it);
    }

    void remove_client(std::uint64_t num) {
        auto it = clients.find(num);
        if (it == clients.end())
            return;
        std::unique_ptr<Client> c = std::move(it->second);
        clients.erase(it);
        if (c->zmq)
            by_routing_id.erase((c->server->tcp ? "t" : "i") + c->routing_id);
        for (const auto& [sid, sub] : c->subs)
            subscriptions.erase(sub.pattern, SubRef{num, sid, {}});
        if (!c->subs.empty())
            routes.clear();
        if (!monitors.empty())
            std::erase_if(monitors, [num](const MonitorRef& m) { return m.client == num; });
        for (const auto& name : c->services)
            drop_instance(name, num);
        // Requests it was serving: their requesters learn now, not at their deadline, in the
        // order they were routed. Requests it was waiting for are forgotten.
        std::vector<std::pair<std::uint64_t, InFlight>> lost;
        for (auto f = in_flight.begin(); f != in_flight.end();) {
            if (f->second.server == num)
                lost.emplace_back(*f);
            if (f->second.server == num || f->second.requester == num)
                f = in_flight.erase(f);
            else
                ++f;
        }
        std::sort(lost.begin(), lost.end(),
                  [](const auto& a, const auto& b) { return a.first < b.first; });
        for (const auto& [id, f] : lost)
            if (auto* requester = find(f.requester))
                send_error(*requester, f.client_request_id, errc::service_lost,
                           c->id + " went away");
        if (c->channel)
            c->channel->disconnect();
        if (c->announced)
            announce(*c, "$sys.client.disconnected");
    }

    // --- heartbeat ----------------------------------------------------------------------

    void tick() {
        heartbeat_timer.expires_after(options.heartbeat);
        heartbeat_timer.async_wait([this](boost::system::error_code ec) {
            if (ec)
                return;
            const auto now = Clock::now();
            const auto now_ns = now_unix_ns();
            std::vector<std::uint64_t> silent;
            for (auto& [num, c] : clients) {
                if (c->zmq && now - c->last_seen > 3 * options.heartbeat)
                    silent.push_back(num);
                else
                    send_control(*c, "ping", nullptr, 0);
                if (c->unreported_drops)
                    report_drops(*c);
            }
            for (auto num : silent)
                remove_client(num);
            // Requests past their deadline: the requester has given up; forget them.
            for (auto it = in_flight.begin(); it != in_flight.end();) {
                const auto deadline = it->second.deadline_ns;
                if (deadline != 0 && deadline < now_ns) {
                    it = in_flight.erase(it);
                } else {
                    ++it;
                }
            }
            tick();
        });
    }

    ~Impl() {
        heartbeat_timer.cancel();
        for (auto& [num, c] : clients)
            if (c->channel)
                c->channel->disconnect();
        for (auto* server : {ipc_server.get(), tcp_server.get()}) {
            if (!server)
                continue;
            server->watch.reset();
            server->monitor_watch.reset();
            server->monitor->close();
            server->router->close();
        }
        for (const auto& path : unlink_on_exit)
            ::unlink(path.c_str());
    }
};

Broker::Broker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Broker::~Broker() = default;

Result<std::unique_ptr<Broker>> Broker::start(boost::asio::io_context& io, Options options,
                                              std::string* failed_endpoint) {
    auto impl = std::make_unique<Impl>(io, std::move(options));
    if (auto ec = impl->bind_all(failed_endpoint))
        return ec;
    impl->tick();
    return std::unique_ptr<Broker>(new Broker(std::move(impl)));
}

void Broker::adopt(std::shared_ptr<Channel> channel) {
    impl_->adopt_channel(std::move(channel));
}

void Broker::adopt(UniqueFd socket, pid_t pid) {
    impl_->adopt_unix(std::move(socket), pid);
}

void Broker::publish_event(const std::string& subject, const google::protobuf::Message& event) {
    impl_->publish_event(subject, event);
}

void Broker::on_sys_request(std::string prefix, SysHandler handler) {
    impl_->sys_handlers.emplace_back(std::move(prefix), std::move(handler));
}

const std::vector<std::string>& Broker::endpoints() const noexcept {
    return impl_->endpoints;
}

v1::BrokerStats Broker::stats() const {
    return impl_->make_stats();
}

} // namespace bus::broker
