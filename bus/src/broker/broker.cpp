// The broker: the router (router.hpp) and the endpoints that feed it, on one io_context
// thread. This file binds the endpoints and beats the heartbeat; the work is elsewhere
// (router.hpp lists where).
#include "bus/broker.hpp"

#include "broker/router.hpp"
#include "broker/unix_server.hpp"
#include "broker/zmq_server.hpp"
#include "bus/endpoint.hpp"

#include <boost/asio/steady_timer.hpp>

#include <random>

#include <unistd.h>

namespace bus::broker {
namespace {

namespace asio = boost::asio;

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

} // namespace

struct Broker::Impl {
    Impl(asio::io_context& io_, Options options_)
        : io(io_), options(std::move(options_)), router(options, random_id()),
          unix_server(io_, router, options), heartbeat_timer(io_) {}

    ~Impl() {
        heartbeat_timer.cancel();
        router.close_all();
        ipc_server.reset();
        tcp_server.reset();
        for (const auto& path : unlink_on_exit)
            ::unlink(path.c_str());
    }

    std::error_code bind_all(std::string* failed) {
        if (options.endpoints.empty()) {
            auto ipc = default_ipc_endpoint();
            if (!ipc)
                return ipc.error();
            auto local = default_unix_endpoint();
            if (!local)
                return local.error();
            options.endpoints = {ipc.value(), local.value()};
        }
        std::vector<std::string> served;
        for (const auto& text : options.endpoints) {
            if (failed)
                *failed = text;
            auto endpoint = parse_endpoint(text);
            if (!endpoint)
                return endpoint.error();
            if (auto ec = bind(endpoint.value()))
                return ec;
            served.push_back(text);
        }
        router.set_endpoints(std::move(served));
        return {};
    }

    std::error_code bind(const Endpoint& endpoint) {
        if (endpoint.scheme == Endpoint::Scheme::unix_socket) {
            if (auto ec = unix_server.listen(endpoint.address))
                return ec;
            unlink_on_exit.push_back(endpoint.address);
            return {};
        }
        const bool tcp = endpoint.scheme == Endpoint::Scheme::tcp;
        auto& server = tcp ? tcp_server : ipc_server;
        if (server)
            return make_error_code(errc::bad_endpoint); // one endpoint per transport
        auto bound = ZmqServer::bind(io, zmq_context, router, options, endpoint);
        if (!bound)
            return bound.error();
        server = std::move(bound).value();
        if (!tcp)
            unlink_on_exit.push_back(endpoint.address);
        return {};
    }

    void tick() {
        heartbeat_timer.expires_after(options.heartbeat);
        heartbeat_timer.async_wait(
            [this, alive = std::weak_ptr<int>(alive)](boost::system::error_code ec) {
                if (ec || alive.expired())
                    return;
                router.heartbeat();
                tick();
            });
    }

    asio::io_context& io;
    Options options;
    Router router;
    UnixServer unix_server;
    zmq::context_t zmq_context{1};
    std::unique_ptr<ZmqServer> ipc_server, tcp_server;
    asio::steady_timer heartbeat_timer;
    std::vector<std::string> unlink_on_exit;
    // A beat that fired before busd stopped still runs its handler: it checks this.
    std::shared_ptr<int> alive = std::make_shared<int>(0);
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
    impl_->unix_server.adopt(std::move(channel));
}

void Broker::adopt(UniqueFd socket, pid_t pid) {
    impl_->unix_server.adopt(std::move(socket), pid);
}

void Broker::adopt_bridge(UniqueFd socket) {
    impl_->unix_server.adopt(std::move(socket), ::getpid(), true);
}

void Broker::on_local_service(ServiceWatch watch) {
    impl_->router.on_local_service(std::move(watch));
}

std::vector<std::string> Broker::local_services() const {
    return impl_->router.local_services();
}

std::error_code Broker::register_type(const std::string& name, std::string_view descriptor_set,
                                      const std::string& registered_by, std::string& detail) {
    return impl_->router.register_type(name, descriptor_set, registered_by, detail);
}

void Broker::on_bridges(std::function<v1::BridgeList()> report) {
    impl_->router.on_bridges(std::move(report));
}

void Broker::publish_event(const std::string& subject, const google::protobuf::Message& event) {
    impl_->router.publish_event(subject, event);
}

Broker::SysAnswer Broker::query(const std::string& subject, std::string_view payload,
                                std::uint32_t uid) {
    return impl_->router.query(subject, payload, uid);
}

void Broker::on_event(EventTap tap) {
    impl_->router.on_event(std::move(tap));
}

void Broker::set_http(std::string url) {
    impl_->router.set_http(std::move(url));
}

void Broker::on_sys_request(std::string prefix, SysHandler handler) {
    impl_->router.on_sys_request(std::move(prefix), std::move(handler));
}

const std::vector<std::string>& Broker::endpoints() const noexcept {
    return impl_->router.endpoints();
}

v1::BrokerStats Broker::stats() const {
    return impl_->router.stats();
}

} // namespace bus::broker
