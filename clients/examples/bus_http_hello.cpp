// bus-http-hello: a minimal HTTP/1.1 "hello" server to run as a busd cluster worker.
//
//   [[app]]
//   name = "hello"
//   command = "/path/to/bus-http-hello"
//   instances = 2
//   listen = ["tcp://127.0.0.1:8080"]
//
// busd accepts; this worker gets each connection from bus::cluster::Worker and answers every
// request on it with "Hello, world!" (keep-alive, pipelining). Responses say which worker
// answered: X-Instance (BUS_INSTANCE, or the number busd gave a worker that joined) and X-Pid.
//
// Started some other way (by hand, by systemd), it joins a running app of busd instead:
//
//   bus-http-hello --join hello [--endpoint unix:///run/user/1000/bus/busd.sock]
//
// On Shutdown (a reload, busd stopping, or busd gone) it drains: idle connections are closed,
// a request already begun is answered with "Connection: close", and the process exits once no
// connection is left (or when the grace period is nearly over).
#include <bus/cluster.hpp>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <unistd.h>

namespace asio = boost::asio;

namespace {

// Case-insensitive search for a header line "name: value" containing `token` in `head`.
bool header_has(std::string_view head, std::string_view name, std::string_view token) {
    auto lower = [](std::string_view s) {
        std::string out(s);
        for (auto& c : out)
            c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        return out;
    };
    const std::string h = lower(head), n = "\r\n" + lower(name) + ":", t = lower(token);
    for (auto at = h.find(n); at != std::string::npos; at = h.find(n, at + 1)) {
        const auto end = h.find("\r\n", at + 2);
        if (h.substr(at + n.size(), end - at - n.size()).find(t) != std::string::npos)
            return true;
    }
    return false;
}

std::size_t content_length(std::string_view head) {
    std::string h(head);
    for (auto& c : h)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const auto at = h.find("\r\ncontent-length:");
    if (at == std::string::npos)
        return 0;
    return static_cast<std::size_t>(std::strtoull(h.c_str() + at + 17, nullptr, 10));
}

class Server;

class Session : public std::enable_shared_from_this<Session> {
public:
    Session(Server& server, asio::ip::tcp::socket socket)
        : server_(server), socket_(std::move(socket)), linger_(socket_.get_executor()) {}
    void start() { read(); }
    // Draining: the next response is the last. A connection that is idle after serving
    // requests is closed after a short linger (a request may be on its way); a new one waits
    // for its first request (the grace period bounds that).
    void drain();

private:
    void read();
    void on_read(std::size_t n);
    void write();
    void finish();
    bool idle() const { return in_.empty() && out_.empty() && !writing_; }

    Server& server_;
    asio::ip::tcp::socket socket_;
    asio::steady_timer linger_;
    std::string in_;
    std::string out_;
    char buffer_[16384];
    std::uint64_t served_ = 0;
    bool writing_ = false;
    bool last_ = false; // the last response (Connection: close) is queued or written
    bool done_ = false;
};

class Server {
public:
    Server(asio::io_context& io, bus::cluster::Worker& worker)
        : io_(io), worker_(worker), exit_timer_(io) {
        headers_ = "X-Instance: " + std::to_string(worker.instance()) +
                   "\r\nX-Pid: " + std::to_string(::getpid()) + "\r\n";
    }

    void accept(bus::cluster::Connection c) {
        asio::ip::tcp::socket socket(io_);
        boost::system::error_code ec;
        const int fd = c.fd.release();
        socket.assign(asio::ip::tcp::v4(), fd, ec); // the protocol only picks option levels
        if (ec) {
            ::close(fd);
            return;
        }
        socket.set_option(asio::ip::tcp::no_delay(true), ec);
        auto session = std::make_shared<Session>(*this, std::move(socket));
        sessions_.insert(session);
        load_changed();
        session->start();
        if (draining_)
            session->drain();
    }

    void shutdown(std::chrono::milliseconds grace) {
        draining_ = true;
        // Leave some of the grace for the exit itself.
        exit_timer_.expires_after(grace * 9 / 10);
        exit_timer_.async_wait([](boost::system::error_code ec) {
            if (!ec)
                std::exit(0);
        });
        auto sessions = sessions_;
        for (auto& s : sessions)
            s->drain();
        maybe_exit();
    }

    void closed(const std::shared_ptr<Session>& s) {
        sessions_.erase(s);
        load_changed();
        maybe_exit();
    }

    bool draining() const { return draining_; }
    const std::string& headers() const { return headers_; }

private:
    void maybe_exit() {
        if (draining_ && sessions_.empty())
            std::exit(0);
    }
    // One load report per loop turn, however many connections came and went in it.
    void load_changed() {
        if (report_posted_)
            return;
        report_posted_ = true;
        asio::post(io_, [this] {
            report_posted_ = false;
            worker_.report_load(static_cast<std::uint32_t>(sessions_.size()));
        });
    }

    asio::io_context& io_;
    bus::cluster::Worker& worker_;
    asio::steady_timer exit_timer_;
    std::set<std::shared_ptr<Session>> sessions_;
    std::string headers_;
    bool draining_ = false;
    bool report_posted_ = false;
};

void Session::drain() {
    if (last_ || done_ || !idle() || served_ == 0)
        return;
    linger_.expires_after(std::chrono::milliseconds(500));
    linger_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
        if (!ec && !self->last_ && self->idle())
            self->finish();
    });
}

void Session::read() {
    socket_.async_read_some(
        asio::buffer(buffer_),
        [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
            if (self->done_)
                return;
            if (ec)
                return self->finish();
            self->on_read(n);
        });
}

void Session::on_read(std::size_t n) {
    in_.append(buffer_, n);
    static const std::string body = "Hello, world!\n";
    while (!last_) {
        const auto end = in_.find("\r\n\r\n");
        if (end == std::string::npos)
            break;
        const std::string_view head(in_.data(), end + 2);
        const std::size_t total = end + 4 + content_length(head);
        if (in_.size() < total)
            break;
        const bool http10 = head.find("HTTP/1.0\r\n") != std::string_view::npos;
        last_ = server_.draining() || (http10 ? !header_has(head, "connection", "keep-alive")
                                              : header_has(head, "connection", "close"));
        out_ += "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " +
                std::to_string(body.size()) + "\r\n" + server_.headers() +
                (last_ ? "Connection: close\r\n" : "") + "\r\n" + body;
        ++served_;
        in_.erase(0, total);
    }
    if (last_)
        in_.clear();
    if (in_.size() > 64 * 1024) // a header that never ends
        return finish();
    if (!out_.empty() && !writing_)
        write();
    if (!last_)
        read();
}

void Session::write() {
    writing_ = true;
    auto data = std::make_shared<std::string>(std::move(out_));
    out_.clear();
    asio::async_write(socket_, asio::buffer(*data),
                      [self = shared_from_this(), data](boost::system::error_code ec, std::size_t) {
                          self->writing_ = false;
                          if (self->done_)
                              return;
                          if (ec)
                              return self->finish();
                          if (!self->out_.empty())
                              return self->write();
                          if (self->last_)
                              return self->finish();
                          if (self->server_.draining())
                              self->drain();
                      });
}

void Session::finish() {
    if (done_)
        return;
    done_ = true;
    linger_.cancel();
    boost::system::error_code ec;
    socket_.shutdown(asio::ip::tcp::socket::shutdown_send, ec);
    socket_.close(ec);
    server_.closed(shared_from_this());
}

} // namespace

int main(int argc, char** argv) {
    asio::io_context io;
    std::string join, endpoint, why;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string flag = argv[i];
        if (flag == "--join")
            join = argv[i + 1];
        else if (flag == "--endpoint")
            endpoint = argv[i + 1];
    }
    auto worker = join.empty() ? bus::cluster::Worker::from_parent(io)
                               : bus::cluster::Worker::join(io, join, endpoint,
                                                            std::chrono::seconds(5), &why);
    if (!worker) {
        std::fprintf(stderr, "bus-http-hello: %s%s\n",
                     (why.empty() ? worker.error().message() : why).c_str(),
                     join.empty() ? " (run it as a busd [[app]], or with --join APP)" : "");
        return 2;
    }
    Server server(io, *worker.value());
    worker.value()->on_connection([&](bus::cluster::Connection c) { server.accept(std::move(c)); });
    worker.value()->on_shutdown([&](std::chrono::milliseconds grace) { server.shutdown(grace); });
    worker.value()->ready();
    io.run();
    return 0;
}
