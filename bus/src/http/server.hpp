// The HTTP/1.1 server under busd's HTTP face (Boost.Beast, on busd's own loop and thread).
// It knows nothing of the bus: it reads bounded requests, hands each to a Handler, writes the
// Response, and keeps server-sent event streams open for whoever the handler gives them to.
//
// Everything from the network is bounded, because anyone on the host can connect:
//   - connections: at most Limits::max_connections; one more is answered 503 and closed;
//   - a request's head and body: Limits::max_header_bytes (431) and max_body_bytes (413);
//   - time: a request must arrive whole within request_timeout of its first byte or of the
//     connection's start (a slowloris peer is cut off), and a kept-alive connection idle for
//     as long is closed;
//   - an event stream whose reader does not keep up loses events (counted, and told with a
//     comment line once there is room), never holding more than max_stream_bytes.
// Only the handler's own code decides what a request means; the server never touches a file.
#pragma once

#include "bus/error.hpp"

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace bus::http {

struct Limits {
    std::size_t max_connections = 256;
    std::size_t max_header_bytes = 8192;
    std::size_t max_body_bytes = 64 * 1024;
    std::chrono::milliseconds request_timeout{10000};
    std::size_t max_stream_bytes = 1u << 20; // queued on one event stream
};

struct Request {
    std::string method;        // GET, POST, ...
    std::string path;          // without the query: "/api/v1/clients"
    std::string query;         // after '?', undecoded
    std::string authorization; // the header, as sent
    std::string body;
};

// An open `text/event-stream` response.
class EventStream {
public:
    virtual ~EventStream() = default;
    // Queues one event (`data` is one line of JSON, without newlines). False: the reader is
    // too far behind and the event was dropped (counted; the reader is told later).
    virtual bool send(std::string_view data) = 0;
    // Called once, on the loop, when the stream ends (the reader left, or the server stops).
    virtual void on_close(std::function<void()> handler) = 0;
    virtual bool closed() const = 0;
};

struct Response {
    int status = 200;
    std::string content_type = "application/json";
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;
    // Set: the response is an event stream, kept open; `stream` gets it once its head is sent.
    std::function<void(std::shared_ptr<EventStream>)> stream;
};

using Handler = std::function<Response(const Request&)>;

class Server {
public:
    // Listens on `address` ("127.0.0.1:8080", "[::1]:0"; port 0 picks one). On failure `why`
    // says what failed, for a person.
    static Result<std::unique_ptr<Server>> start(boost::asio::io_context& io,
                                                 const std::string& address, Limits limits,
                                                 Handler handler, std::string* why = nullptr);
    // Closes every connection and stream (their on_close handlers run).
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // "http://127.0.0.1:PORT", with the port it bound.
    const std::string& url() const noexcept;
    std::size_t connections() const noexcept;
    std::uint64_t refused_connections() const noexcept;

    struct Impl;

private:
    explicit Server(std::shared_ptr<Impl> impl);
    std::shared_ptr<Impl> impl_;
};

// `name`'s value in a query string ("subject=orders.%3E&lines=10"), percent-decoded; empty if
// it is not there or is not valid percent-encoding.
std::string query_param(std::string_view query, std::string_view name);

} // namespace bus::http
