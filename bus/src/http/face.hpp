// busd's HTTP face (docs/http.md): what busd knows, for people and tools that do not speak the
// bus. It is one component of the daemon, composed by daemon.cpp beside the broker and the
// cluster, on the same loop, and it learns everything through the broker's public surface:
//   - Broker::query() answers `/api/v1/...` and feeds `/metrics`: the same code, and so the
//     same facts, as a client's `$sys` request (the cluster's control and logs included);
//   - Broker::on_event() feeds `/events`;
//   - the inspector (inspector.hpp) is a bus client of busd's own, over a socketpair.
// Reading is open to whoever reaches the address (loopback by default); changes and what
// carries data (logs, the inspector) need the bearer token busd writes to http.token (0600).
#pragma once

#include "http/server.hpp"

#include "bus/broker.hpp"

#include <memory>
#include <string>

namespace bus::http {

struct Options {
    std::string listen;
    Limits limits;
    std::string token_file;
};

class Face {
public:
    // Serves `options.listen` and writes a new token to `options.token_file`. On failure `why`
    // says what failed, for a person.
    static Result<std::unique_ptr<Face>> start(boost::asio::io_context& io, broker::Broker& broker,
                                               Options options, std::string* why = nullptr);
    // Closes every connection and stream, and removes the token file.
    ~Face();
    Face(const Face&) = delete;
    Face& operator=(const Face&) = delete;

    const std::string& url() const noexcept;

    struct Impl;

private:
    explicit Face(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

} // namespace bus::http
