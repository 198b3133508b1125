// The face's routes (docs/http.md has the reference):
//   GET  /metrics                        Prometheus text (metrics.cpp)
//   GET  /events                         server-sent events: busd's own events
//   GET  /api/v1/{clients,subscriptions,services,queues,types,stats}   the `$sys` answers
//   GET  /api/v1/types/NAME              a type's FileDescriptorSet
//   GET  /api/v1/apps[/NAME]             the cluster's apps
//   GET  /api/v1/auth                    token          204 if the token is right
//   GET  /api/v1/apps/NAME/logs?lines=N  token          the app's last lines
//   GET  /api/v1/inspect?subject=P       token          messages on P as events (inspector.cpp)
//   POST /api/v1/apps/NAME/OP            token          OP: reload restart start stop scale delete
//   GET  /, /app.js, /style.css          the dashboard (assets compiled in: assets.hpp)
#include "http/face.hpp"

#include "http/assets.hpp"
#include "http/inspector.hpp"
#include "http/metrics.hpp"

#include "bus/message.hpp"
#include "bus/subject.hpp"
#include "bus/v1/cluster.pb.h"

#include <google/protobuf/util/json_util.h>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <stdexcept>

#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

namespace bus::http {
namespace {

using json = nlohmann::json;

Response json_error(int status, std::string_view error, std::string_view detail) {
    Response r;
    r.status = status;
    r.body = json{{"error", error}, {"detail", detail}}.dump(-1, ' ', false,
                                                             json::error_handler_t::replace) +
             "\n";
    return r;
}

// 405, naming the method `path` takes.
Response method_not_allowed(const Request& r, const char* allowed) {
    auto out = json_error(405, "method_not_allowed", r.method + " " + r.path);
    out.headers.emplace_back("Allow", allowed);
    return out;
}

Response json_answer(const google::protobuf::Message& message) {
    auto text = to_json(message);
    if (!text)
        return json_error(500, "internal", "cannot show the answer as JSON");
    Response r;
    r.body = std::move(text).value() + "\n";
    return r;
}

// HTTP statuses for the bus errors a `$sys` request can answer with.
int status_of(errc e) {
    switch (e) {
    case errc::forbidden:
        return 403;
    case errc::no_responders:
        return 404;
    case errc::request_failed:
        return 400;
    default:
        return 500;
    }
}

Response sys_answer(broker::Broker::SysAnswer a) {
    if (!a.reply)
        return json_error(status_of(a.error), error_wire_name(a.error), a.detail);
    return json_answer(*a.reply);
}

// 32 random bytes as hex: what a client sends as `Authorization: Bearer ...`.
std::string new_token() {
    unsigned char bytes[32];
    std::size_t got = 0;
    while (got < sizeof bytes) {
        const auto n = ::getrandom(bytes + got, sizeof bytes - got, 0);
        if (n < 0 && errno != EINTR)
            throw std::runtime_error(std::string("getrandom: ") + std::strerror(errno));
        if (n > 0)
            got += static_cast<std::size_t>(n);
    }
    static constexpr char digits[] = "0123456789abcdef";
    std::string token;
    for (unsigned char b : bytes) {
        token += digits[b >> 4];
        token += digits[b & 15];
    }
    return token;
}

// Written whole under a new name, then renamed: the file is 0600 from its first byte, and a
// reader never sees half a token.
std::error_code write_token(const std::string& path, const std::string& token) {
    const std::string temporary = path + ".new";
    ::unlink(temporary.c_str());
    const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return {errno, std::system_category()};
    const std::string text = token + "\n";
    const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    const int saved = errno;
    ::close(fd);
    if (!written || ::rename(temporary.c_str(), path.c_str()) != 0) {
        const std::error_code ec(written ? errno : saved, std::system_category());
        ::unlink(temporary.c_str());
        return ec;
    }
    return {};
}

// Equal, in a time that does not depend on where they differ.
bool same_secret(std::string_view a, std::string_view b) {
    if (a.size() != b.size())
        return false;
    unsigned char diff = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        diff |= static_cast<unsigned char>(a[i] ^ b[i]);
    return diff == 0;
}

} // namespace

struct Face::Impl {
    Impl(boost::asio::io_context& io, broker::Broker& b) : broker(b), inspector(io, b) {}

    Response handle(const Request& r);
    Response api(const Request& r, std::string_view path);
    Response app(const Request& r, std::string_view name, std::string_view op);
    Response events();
    void broadcast(const std::string& subject, const google::protobuf::Message& event);

    bool authorized(const Request& r) const {
        constexpr std::string_view scheme = "Bearer ";
        return r.authorization.starts_with(scheme) &&
               same_secret(std::string_view(r.authorization).substr(scheme.size()), token);
    }
    static Response unauthorized() {
        auto r = json_error(401, "unauthorized",
                            "this needs busd's token: Authorization: Bearer $(cat http.token)");
        r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"busd\"");
        return r;
    }

    broker::Broker& broker;
    Inspector inspector;
    std::unique_ptr<Server> server;
    std::string token, token_file;
    std::vector<std::weak_ptr<EventStream>> event_streams;
};

Response Face::Impl::handle(const Request& r) {
    std::string_view path = r.path;
    if (path.starts_with("/api/v1/"))
        return api(r, path.substr(std::string_view("/api/v1/").size()));
    if (r.method != "GET")
        return method_not_allowed(r, "GET");
    if (path == "/metrics") {
        Response out;
        out.content_type = "text/plain; version=0.0.4; charset=utf-8";
        out.body = render_metrics(broker, *server);
        return out;
    }
    if (path == "/events")
        return events();
    if (path == "/")
        path = "/index.html";
    if (const Asset* asset = find_asset(path.substr(1))) {
        Response out;
        out.content_type = std::string(asset->content_type);
        out.body = std::string(asset->content);
        // The page loads nothing from elsewhere, and may not.
        out.headers.emplace_back("Content-Security-Policy",
                                 "default-src 'self'; img-src 'self' data:; "
                                 "style-src 'self'; frame-ancestors 'none'");
        return out;
    }
    return json_error(404, "not_found", r.path);
}

Response Face::Impl::api(const Request& r, std::string_view path) {
    const auto slash = path.find('/');
    const std::string_view first = path.substr(0, slash);
    const std::string_view rest =
        slash == std::string_view::npos ? std::string_view() : path.substr(slash + 1);

    if (first == "apps" && !rest.empty()) {
        const auto s = rest.find('/');
        return app(r, rest.substr(0, s),
                   s == std::string_view::npos ? std::string_view() : rest.substr(s + 1));
    }
    if (r.method != "GET")
        return method_not_allowed(r, "GET");
    const std::uint32_t uid = ::getuid();
    if (first == "auth") {
        if (!authorized(r))
            return unauthorized();
        Response out;
        out.status = 204;
        return out;
    }
    if (first == "types" && !rest.empty())
        return sys_answer(broker.query("$sys.type", rest, uid));
    if (!rest.empty())
        return json_error(404, "not_found", r.path);
    for (const char* list : {"clients", "subscriptions", "services", "queues", "types", "stats"})
        if (first == list)
            return sys_answer(broker.query(std::string("$sys.") + list, {}, uid));
    if (first == "apps")
        return sys_answer(broker.query("$sys.cluster.ls", {}, uid));
    if (first == "inspect") {
        if (!authorized(r))
            return unauthorized();
        const std::string pattern = query_param(r.query, "subject");
        if (pattern.empty())
            return json_error(400, "bad_request", "inspect needs ?subject=PATTERN");
        if (!valid_pattern(pattern))
            return json_error(400, "invalid_subject", "'" + pattern + "' is not a subject pattern");
        Response out;
        out.stream = [this, pattern](std::shared_ptr<EventStream> stream) {
            if (auto why = inspector.watch(pattern, stream); !why.empty())
                stream->send(
                    json{{"error", why}}.dump(-1, ' ', false, json::error_handler_t::replace));
        };
        return out;
    }
    return json_error(404, "not_found", r.path);
}

// /api/v1/apps/NAME[/OP]: GET the app, GET its logs, POST a change.
Response Face::Impl::app(const Request& r, std::string_view name, std::string_view op) {
    v1::ClusterCommand command;
    if (r.method == "POST" && !r.body.empty()) {
        // The body, if any, is a ClusterCommand in protobuf's JSON ({"instances": 3}).
        google::protobuf::util::JsonParseOptions options;
        if (!google::protobuf::util::JsonStringToMessage(r.body, &command, options).ok())
            return json_error(400, "bad_request",
                              "the body is not a bus.v1.ClusterCommand in JSON, such as "
                              "{\"instances\": 3}");
    }
    command.set_app(std::string(name));
    if (op.empty() || op == "logs") {
        if (r.method != "GET")
            return method_not_allowed(r, "GET");
        if (op == "logs") {
            if (!authorized(r))
                return unauthorized();
            const std::string lines = query_param(r.query, "lines");
            unsigned n = 0;
            const auto [end, ec] = std::from_chars(lines.data(), lines.data() + lines.size(), n);
            if (!lines.empty() && (ec != std::errc() || end != lines.data() + lines.size()))
                return json_error(400, "bad_request", "lines must be a number");
            command.set_lines(n);
            return sys_answer(
                broker.query("$sys.cluster.logs", command.SerializeAsString(), ::getuid()));
        }
        return sys_answer(broker.query("$sys.cluster.ls", command.SerializeAsString(), ::getuid()));
    }
    for (const char* change : {"reload", "restart", "start", "stop", "scale", "delete"}) {
        if (op != change)
            continue;
        if (r.method != "POST")
            return method_not_allowed(r, "POST");
        if (!authorized(r))
            return unauthorized();
        if (op == "scale" && command.instances() == 0)
            return json_error(400, "bad_request", "scale needs {\"instances\": N}, N >= 1");
        return sys_answer(broker.query(std::string("$sys.cluster.") + change,
                                       command.SerializeAsString(), ::getuid()));
    }
    return json_error(404, "not_found", r.path);
}

Response Face::Impl::events() {
    Response out;
    out.stream = [this](std::shared_ptr<EventStream> stream) {
        std::erase_if(event_streams, [](const auto& w) { return w.expired(); });
        event_streams.push_back(stream);
    };
    return out;
}

void Face::Impl::broadcast(const std::string& subject, const google::protobuf::Message& event) {
    if (event_streams.empty())
        return;
    auto body = to_json(event);
    if (!body)
        return;
    const std::string line =
        "{\"subject\":" + json(subject).dump() + ",\"event\":" + body.value() + "}";
    std::erase_if(event_streams, [&](const std::weak_ptr<EventStream>& w) {
        auto s = w.lock();
        if (!s || s->closed())
            return true;
        s->send(line);
        return false;
    });
}

Result<std::unique_ptr<Face>> Face::start(boost::asio::io_context& io, broker::Broker& broker,
                                          Options options, std::string* why) {
    auto impl = std::make_unique<Impl>(io, broker);
    impl->token = new_token();
    impl->token_file = options.token_file;
    if (auto ec = write_token(impl->token_file, impl->token)) {
        if (why)
            *why = "cannot write the http token to " + impl->token_file + ": " + ec.message();
        return ec;
    }
    auto* i = impl.get();
    auto server = Server::start(
        io, options.listen, options.limits, [i](const Request& r) { return i->handle(r); }, why);
    if (!server) {
        ::unlink(impl->token_file.c_str());
        return server.error();
    }
    impl->server = std::move(server).value();
    broker.set_http(impl->server->url());
    broker.on_event([i](const std::string& subject, const google::protobuf::Message& event) {
        i->broadcast(subject, event);
    });
    return std::unique_ptr<Face>(new Face(std::move(impl)));
}

Face::Face(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Face::~Face() {
    impl_->broker.on_event({});
    impl_->broker.set_http({});
    impl_->server.reset();
    ::unlink(impl_->token_file.c_str());
}

const std::string& Face::url() const noexcept {
    return impl_->server->url();
}

} // namespace bus::http
