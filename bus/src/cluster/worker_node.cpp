// bus::cluster::Worker under a Node.js `cluster` primary: the worker's side of Node's own
// cluster protocol (lib/internal/cluster/child.js in Node), so that a Node cluster app can run
// C++ workers beside its JavaScript ones, unchanged on the primary's side.
//
// Every message is a NODE_CLUSTER internal message on the IPC channel, numbered by `seq`; an
// answer names the message it answers by `ack`:
//   worker -> primary   online                      once, at start
//                       queryServer {address, port, addressType, index}
//                                                   per address; the primary answers errno
//                                                   (null when it listens), its `key`, and in
//                                                   the `none` scheduling policy the listening
//                                                   socket itself as the answer's handle
//                       listening {...}             once that answer came
//                       {ack: seq, accepted}        for each newconn
//   primary -> worker   newconn {key} + a socket    round robin: one connection at a time
//                       disconnect                  stop: close servers, then the channel
// The key the primary gives a server is made of address:port:addressType:fd:index, so the C++
// worker's query must look like a JavaScript worker's for the same address (no `fd` field,
// `address` null for "any", index 0) to share its round-robin handle with the JS workers.
#include "bus/cluster.hpp"

#include "cluster/node_primary.hpp"
#include "transport/sockets.hpp"

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <set>
#include <string_view>

#include <fcntl.h>
#include <sys/socket.h>

namespace bus::cluster {

namespace {

// One BUS_LISTEN address as the fields of a JavaScript worker's queryServer.
std::optional<nlohmann::json> node_query(std::string_view address) {
    if (!address.starts_with("tcp://"))
        return std::nullopt;
    address.remove_prefix(6);
    const auto colon = address.rfind(':');
    if (colon == std::string_view::npos)
        return std::nullopt;
    std::string_view host = address.substr(0, colon);
    const std::string_view port_text = address.substr(colon + 1);
    int port = 0;
    if (port_text.empty() || port_text.size() > 5)
        return std::nullopt;
    for (char c : port_text) {
        if (c < '0' || c > '9')
            return std::nullopt;
        port = port * 10 + (c - '0');
    }
    if (port > 65535)
        return std::nullopt;
    int family = 4;
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
        family = 6;
    }
    if (host.find_first_of(" \t,") != std::string_view::npos)
        return std::nullopt;
    nlohmann::json query = {{"act", "queryServer"},
                            {"index", 0},
                            {"data", nullptr},
                            {"port", port},
                            {"addressType", family}};
    // What net.Server.listen(port) sends without a host: "any address".
    query["address"] = host.empty() ? nlohmann::json(nullptr) : nlohmann::json(std::string(host));
    return query;
}

} // namespace

void Worker::node_start(int id) {
    node_ = std::make_unique<NodePrimary>();
    instance_ = id;
    // The primary's user messages (worker.send()) are not the Worker's; the channel delivers
    // the cluster's internal ones separately.
    channel_->on_message({});
    channel_->on_internal([this](Message& m) { node_handle(m); });
    node_->send(*channel_, {{"act", "online"}});
}

void Worker::node_fail(const std::string& why) {
    std::fprintf(stderr, "bus::cluster::Worker: %s\n", why.c_str());
    std::exit(1);
}

void Worker::node_ready() {
    const char* listen = std::getenv("BUS_LISTEN");
    if (!listen || !*listen)
        return node_fail("started by a Node cluster primary without BUS_LISTEN "
                         "(cluster.fork({BUS_LISTEN: 'tcp://HOST:PORT'}) names what to serve)");
    std::string_view rest = listen;
    std::set<std::string> seen;
    while (!rest.empty()) {
        const auto comma = rest.find(',');
        std::string_view item = rest.substr(0, comma);
        rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
        while (!item.empty() && item.front() == ' ')
            item.remove_prefix(1);
        while (!item.empty() && item.back() == ' ')
            item.remove_suffix(1);
        if (item.empty() || !seen.insert(std::string(item)).second)
            continue;
        auto query = node_query(item);
        if (!query)
            return node_fail("BUS_LISTEN: \"" + std::string(item) + "\" is not tcp://HOST:PORT");
        const auto seq = node_->send(*channel_, *query);
        node_->queries[seq] = {std::string(item), std::move(*query)};
    }
}

void Worker::node_handle(Message& m) {
    auto message = nlohmann::json::parse(m.payload(), nullptr, /*allow_exceptions=*/false);
    if (!message.is_object())
        return;
    const auto ack = message.find("ack");
    const auto act = message.find("act");
    if (ack != message.end() && ack->is_number_unsigned()) {
        // The answer to a queryServer.
        auto query = node_->queries.find(ack->get<std::uint64_t>());
        if (query == node_->queries.end())
            return;
        auto asked = std::move(query->second);
        node_->queries.erase(query);
        // As net.js tests it: anything truthy is an error (round robin answers null on
        // success, the shared handle 0).
        const auto error = message.find("errno");
        const bool failed = error != message.end() && !error->is_null() && *error != 0 &&
                            *error != false && *error != "";
        if (failed)
            return node_fail("the Node primary could not listen on " + asked.address + " (errno " +
                             error->dump() + ")");
        const auto key = message.find("key");
        if (key != message.end() && key->is_string())
            node_->keys.insert(key->get<std::string>());
        if (m.fds.size() == 1) // scheduling policy `none`: we accept on its socket
            add_listener(std::move(m.fds.front()));
        const auto sockname = message.find("sockname");
        auto& listening = asked.message;
        listening["act"] = "listening";
        if (sockname != message.end() && sockname->is_object() && sockname->contains("port"))
            listening["port"] = (*sockname)["port"];
        node_->send(*channel_, std::move(listening));
        return;
    }
    if (act == message.end() || !act->is_string())
        return;
    if (*act == "newconn") {
        const auto seq = message.find("seq");
        const auto key = message.find("key");
        const bool ours = key != message.end() && key->is_string() &&
                          node_->keys.contains(key->get<std::string>());
        const bool accepted = ours && m.fds.size() == 1 && on_connection_ && !shutting_down_;
        nlohmann::json answer = {{"accepted", accepted}};
        if (seq != message.end())
            answer["ack"] = *seq;
        if (!accepted) {
            // The primary hands it to another worker; ours is closed with the message.
            node_->send(*channel_, std::move(answer));
            return;
        }
        UniqueFd fd = std::move(m.fds.front());
        // The socket is libuv's, non-blocking; the flag belongs to the open file, which
        // the primary shares until our answer, so it is set here as Connection promises.
        ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK);
        sockaddr_storage peer{};
        socklen_t length = sizeof peer;
        std::string peer_text = "?";
        if (::getpeername(fd.get(), reinterpret_cast<sockaddr*>(&peer), &length) == 0)
            peer_text = bus::detail::address_text(peer);
        std::string local = bus::detail::local_address_text(fd.get());
        on_connection_({std::move(fd), std::move(peer_text), std::move(local), 0});
        node_->send(*channel_, std::move(answer));
    } else if (*act == "disconnect") {
        shutdown(default_grace);
    }
}

} // namespace bus::cluster
