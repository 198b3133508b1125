// Beast's reading and writing, with the bounds server.hpp lists. One Session per connection,
// owned by the operations in flight on it (shared_ptr) and listed weakly by the server, which
// closes them all when it goes.
#include "http/server.hpp"

#include <utility> // before Asio (Boost 1.74 misses it: DESIGN.md)

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <array>
#include <charconv>
#include <deque>
#include <map>
#include <optional>

#include <sys/socket.h>

namespace bus::http {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

// Sent without waiting to a connection past max_connections, which is then closed.
constexpr std::string_view busy_response =
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    "Content-Length: 88\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
    "{\"error\":\"too_many_connections\",\"detail\":\"busd's HTTP connection limit is reached\"}\n";

constexpr auto keepalive_interval = std::chrono::seconds(15);

bhttp::status status_of(int code) {
    return static_cast<bhttp::status>(code);
}

} // namespace

class Session;

struct Server::Impl : std::enable_shared_from_this<Impl> {
    Impl(asio::io_context& io_, Limits l, Handler h)
        : acceptor(io_), keepalive(io_), retry(io_), limits(l), handler(std::move(h)) {}

    void accept();
    void tick();
    void stop();

    tcp::acceptor acceptor;
    asio::steady_timer keepalive;
    asio::steady_timer retry; // accept again after a failed accept
    Limits limits;
    Handler handler;
    std::string url;
    std::map<Session*, std::weak_ptr<Session>> sessions;
    std::uint64_t refused = 0;
    bool stopped = false;
};

class Session : public EventStream, public std::enable_shared_from_this<Session> {
public:
    Session(std::shared_ptr<Server::Impl> server, tcp::socket socket)
        : server_(std::move(server)), stream_(std::move(socket)) {}

    void start() { read_request(); }

    // The server stops, or the peer left: every operation in flight ends with an error.
    void close() {
        if (closed_)
            return;
        closed_ = true;
        beast::error_code ignored;
        stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
        stream_.close();
        server_->sessions.erase(this);
        if (auto handler = std::exchange(on_close_, {}))
            handler();
    }

    // --- EventStream -------------------------------------------------------------------

    bool send(std::string_view data) override {
        if (closed_)
            return false;
        if (queued_ + data.size() + 8 > server_->limits.max_stream_bytes) {
            ++dropped_;
            return false;
        }
        if (dropped_) {
            queue(": dropped " + std::to_string(dropped_) + " events: this reader was behind\n\n");
            dropped_ = 0;
        }
        std::string event;
        event.reserve(data.size() + 8);
        event.append("data: ").append(data).append("\n\n");
        queue(std::move(event));
        return true;
    }

    void on_close(std::function<void()> handler) override { on_close_ = std::move(handler); }
    bool closed() const override { return closed_; }

    // A comment line now and then: proxies keep the stream open, and a reader that went away
    // without a word is found out by the write failing.
    void keepalive() {
        if (streaming_ && queued_ == 0)
            queue(": keepalive\n\n");
    }

private:
    void read_request() {
        parser_.emplace();
        parser_->header_limit(static_cast<std::uint32_t>(server_->limits.max_header_bytes));
        parser_->body_limit(server_->limits.max_body_bytes);
        stream_.expires_after(server_->limits.request_timeout);
        bhttp::async_read(stream_, buffer_, *parser_,
                          [self = shared_from_this()](beast::error_code ec, std::size_t) {
                              self->on_request(ec);
                          });
    }

    void on_request(beast::error_code ec) {
        if (closed_ || server_->stopped)
            return;
        if (ec == bhttp::error::header_limit)
            return refuse(431, "request_header_too_large", "the request's head is too large");
        if (ec == bhttp::error::body_limit)
            return refuse(413, "payload_too_large", "the request's body is too large");
        if (ec == beast::error::timeout && parser_->got_some())
            return refuse(408, "request_timeout", "the request did not arrive in time");
        if (ec == bhttp::error::end_of_stream || ec == beast::error::timeout ||
            ec == asio::error::connection_reset || ec == asio::error::operation_aborted)
            return close();
        if (ec)
            return refuse(400, "bad_request", ec.message());

        auto& in = parser_->get();
        Request request;
        request.method = std::string(in.method_string());
        const std::string_view target(in.target().data(), in.target().size());
        const auto question = target.find('?');
        request.path = std::string(target.substr(0, question));
        if (question != std::string_view::npos)
            request.query = std::string(target.substr(question + 1));
        if (auto it = in.find(bhttp::field::authorization); it != in.end())
            request.authorization = std::string(it->value());
        request.body = std::move(in.body());
        const bool keep_alive = in.keep_alive();

        Response response;
        try {
            response = server_->handler(request);
        } catch (const std::exception&) {
            response = {};
            response.status = 500;
            response.body = "{\"error\":\"internal\",\"detail\":\"busd failed to answer\"}\n";
        }
        if (response.stream)
            return start_stream(std::move(response.stream));
        write_response(std::move(response), keep_alive);
    }

    // `detail` is ours or Beast's: plain words, no quotes.
    void refuse(int status, const char* error, std::string detail) {
        std::erase_if(detail, [](char c) { return c == '"' || c == '\\' || c < ' '; });
        Response r;
        r.status = status;
        r.body = std::string("{\"error\":\"") + error + "\",\"detail\":\"" + detail + "\"}\n";
        write_response(std::move(r), false);
    }

    void write_response(Response r, bool keep_alive) {
        auto out = std::make_shared<bhttp::response<bhttp::string_body>>(status_of(r.status), 11);
        out->set(bhttp::field::server, "busd");
        out->set(bhttp::field::content_type, r.content_type);
        out->set(bhttp::field::cache_control, "no-store");
        out->set("X-Content-Type-Options", "nosniff");
        for (auto& [name, value] : r.headers)
            out->set(name, value);
        out->body() = std::move(r.body);
        out->keep_alive(keep_alive);
        out->prepare_payload();
        stream_.expires_after(server_->limits.request_timeout);
        bhttp::async_write(
            stream_, *out,
            [self = shared_from_this(), out, keep_alive](beast::error_code ec, std::size_t) {
                if (ec || !keep_alive || self->server_->stopped)
                    return self->close();
                self->read_request();
            });
    }

    void start_stream(std::function<void(std::shared_ptr<EventStream>)> begin) {
        streaming_ = true;
        stream_.expires_never();
        queue("HTTP/1.1 200 OK\r\nServer: busd\r\nContent-Type: text/event-stream\r\n"
              "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
              "Connection: close\r\n\r\n");
        watch_peer();
        begin(shared_from_this());
    }

    // A stream's reader sends nothing more; reading tells when it leaves.
    void watch_peer() {
        stream_.socket().async_read_some(
            asio::buffer(scratch_), [self = shared_from_this()](beast::error_code ec, std::size_t) {
                if (ec)
                    return self->close();
                self->watch_peer();
            });
    }

    void queue(std::string chunk) {
        queued_ += chunk.size();
        out_.push_back(std::move(chunk));
        if (!writing_)
            write_next();
    }

    void write_next() {
        if (closed_ || out_.empty()) {
            writing_ = false;
            return;
        }
        writing_ = true;
        asio::async_write(stream_.socket(), asio::buffer(out_.front()),
                          [self = shared_from_this()](beast::error_code ec, std::size_t) {
                              if (ec)
                                  return self->close();
                              self->queued_ -= self->out_.front().size();
                              self->out_.pop_front();
                              self->write_next();
                          });
    }

    std::shared_ptr<Server::Impl> server_;
    beast::tcp_stream stream_;
    beast::flat_buffer buffer_;
    std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
    bool closed_ = false;
    // Event stream mode.
    bool streaming_ = false;
    bool writing_ = false;
    std::deque<std::string> out_;
    std::size_t queued_ = 0;
    std::uint64_t dropped_ = 0;
    std::array<char, 512> scratch_;
    std::function<void()> on_close_;
};

void Server::Impl::accept() {
    acceptor.async_accept([self = shared_from_this()](beast::error_code ec, tcp::socket socket) {
        if (self->stopped)
            return;
        if (ec) {
            // Out of fds (EMFILE) and the like: the connection waits in the backlog; try again
            // in a moment rather than spin on an accept that fails at once.
            self->retry.expires_after(std::chrono::milliseconds(100));
            self->retry.async_wait([self](beast::error_code) {
                if (!self->stopped)
                    self->accept();
            });
            return;
        }
        if (self->sessions.size() >= self->limits.max_connections) {
            ++self->refused;
            ::send(socket.native_handle(), busy_response.data(), busy_response.size(),
                   MSG_DONTWAIT | MSG_NOSIGNAL);
            beast::error_code ignored;
            socket.close(ignored);
        } else {
            auto session = std::make_shared<Session>(self, std::move(socket));
            self->sessions.emplace(session.get(), session);
            session->start();
        }
        self->accept();
    });
}

void Server::Impl::tick() {
    keepalive.expires_after(keepalive_interval);
    keepalive.async_wait([weak = weak_from_this()](beast::error_code ec) {
        auto self = weak.lock();
        if (ec || !self || self->stopped)
            return;
        for (auto& [raw, session] : self->sessions)
            if (auto s = session.lock())
                s->keepalive();
        self->tick();
    });
}

void Server::Impl::stop() {
    stopped = true;
    beast::error_code ignored;
    acceptor.close(ignored);
    keepalive.cancel();
    retry.cancel();
    auto all = std::move(sessions);
    for (auto& [raw, session] : all)
        if (auto s = session.lock())
            s->close();
    handler = {};
}

Result<std::unique_ptr<Server>> Server::start(asio::io_context& io, const std::string& address,
                                              Limits limits, Handler handler, std::string* why) {
    auto fail = [&](std::error_code ec,
                    const std::string& what) -> Result<std::unique_ptr<Server>> {
        if (why)
            *why = what;
        return ec;
    };
    // ADDR:PORT, [V6]:PORT, or :PORT / PORT for loopback.
    std::string host = "127.0.0.1", port_text = address;
    if (const auto colon = address.rfind(':'); colon != std::string::npos) {
        host = address.substr(0, colon);
        port_text = address.substr(colon + 1);
        if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
            host = host.substr(1, host.size() - 2);
        if (host.empty())
            host = "127.0.0.1";
    }
    unsigned port = 0;
    const auto [end, perr] =
        std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    beast::error_code ec;
    const auto ip = asio::ip::make_address(host, ec);
    if (ec || perr != std::errc() || end != port_text.data() + port_text.size() || port > 65535 ||
        port_text.empty())
        return fail(make_error_code(std::errc::invalid_argument),
                    "--http " + address + ": not ADDR:PORT (an IP address and a port)");

    auto impl = std::make_shared<Impl>(io, limits, std::move(handler));
    const tcp::endpoint endpoint(ip, static_cast<unsigned short>(port));
    impl->acceptor.open(endpoint.protocol(), ec);
    if (!ec)
        impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec)
        impl->acceptor.bind(endpoint, ec);
    if (!ec)
        impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
        return fail(ec, "cannot serve http on " + address + ": " + ec.message());
    const auto bound = impl->acceptor.local_endpoint();
    const std::string shown = bound.address().is_v6() ? "[" + bound.address().to_string() + "]"
                                                      : bound.address().to_string();
    impl->url = "http://" + shown + ":" + std::to_string(bound.port());
    impl->accept();
    impl->tick();
    return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() {
    impl_->stop();
}

const std::string& Server::url() const noexcept {
    return impl_->url;
}

std::size_t Server::connections() const noexcept {
    return impl_->sessions.size();
}

std::uint64_t Server::refused_connections() const noexcept {
    return impl_->refused;
}

std::string query_param(std::string_view query, std::string_view name) {
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9')
            return c - '0';
        if (c >= 'a' && c <= 'f')
            return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
            return c - 'A' + 10;
        return -1;
    };
    while (!query.empty()) {
        const auto amp = query.find('&');
        const std::string_view pair = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
        const auto eq = pair.find('=');
        if (pair.substr(0, eq) != name)
            continue;
        const std::string_view raw =
            eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
        std::string value;
        value.reserve(raw.size());
        for (std::size_t i = 0; i < raw.size(); ++i) {
            if (raw[i] == '+') {
                value += ' ';
            } else if (raw[i] == '%') {
                if (i + 2 >= raw.size())
                    return {};
                const int hi = hex(raw[i + 1]), lo = hex(raw[i + 2]);
                if (hi < 0 || lo < 0)
                    return {};
                value += static_cast<char>(hi * 16 + lo);
                i += 2;
            } else {
                value += raw[i];
            }
        }
        return value;
    }
    return {};
}

} // namespace bus::http
