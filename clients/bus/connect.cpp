// Global options, connecting to busd, waiting for a request's answer, exit codes and the words
// for request errors (connect.hpp).
#include "connect.hpp"

#include "loop.hpp"

#include <bus/endpoint.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>

#include <unistd.h>

namespace bus::cli {

const char* const exit_codes_help = "Exit codes:\n"
                                    "  0  success\n"
                                    "  1  other failure\n"
                                    "  2  usage: bad flags or input (unknown type, malformed JSON, "
                                    "bad subject or pattern)\n"
                                    "  3  no broker answered on the endpoint\n"
                                    "  4  no_responders: nobody serves the service\n"
                                    "  5  timeout: no reply (or too few messages) in time\n"
                                    "  6  service_lost: the instance handling the request went "
                                    "away\n"
                                    "  7  the service answered with an error\n"
                                    "  8  forbidden by the broker's access rules";

bool Global::color() const {
    return !no_color && !std::getenv("NO_COLOR") && ::isatty(STDOUT_FILENO);
}

namespace {

std::string start_hint(const std::string& endpoint) {
    return "\n  Is busd running? Start it with `busd` (it serves the default endpoint) or `busd "
           "-e " +
           endpoint + "`, or point -e / BUS_ENDPOINT at the broker you mean.";
}

} // namespace

std::shared_ptr<Client> connect(boost::asio::io_context& io, const Global& g,
                                const std::string& name) {
    auto parsed = parse_endpoint(g.endpoint);
    if (!parsed)
        throw Failure(exit_code::usage,
                      "bad endpoint '" + g.endpoint +
                          "': expected ipc://PATH, unix://PATH or tcp://HOST:PORT");
    // ZeroMQ connects lazily and retries forever: a missing socket file is the common case
    // and can be told at once.
    if (parsed.value().scheme == Endpoint::Scheme::ipc &&
        !std::filesystem::exists(parsed.value().address))
        throw Failure(exit_code::unavailable, "no broker at " + g.endpoint + " (" +
                                                  parsed.value().address + " does not exist)." +
                                                  start_hint(g.endpoint));
    ClientOptions options;
    options.name = "bus-" + name;
    auto client = Client::connect(io, g.endpoint, options);
    if (!client && client.error() == errc::no_server_key)
        throw Failure(exit_code::unavailable,
                      "cannot connect to " + g.endpoint +
                          ": tcp:// needs the broker's public CURVE key in BUS_SERVER_KEY (the "
                          "40 characters `busd --generate-keys FILE` printed)");
    if (!client)
        throw Failure(exit_code::unavailable, "cannot connect to " + g.endpoint + ": " +
                                                  client.error().message() + "." +
                                                  start_hint(g.endpoint));
    const auto wait = std::chrono::milliseconds(
        static_cast<std::int64_t>(std::max(0.0, g.connect_timeout_s) * 1000));
    if (auto ec = client.value()->flush_wait(wait)) {
        if (interrupted())
            throw Failure(exit_code::unavailable, "interrupted while connecting to " + g.endpoint);
        throw Failure(exit_code::unavailable, "no broker answered at " + g.endpoint + " within " +
                                                  std::to_string(wait.count()) + " ms (" +
                                                  ec.message() + ")." + start_hint(g.endpoint));
    }
    return client.value();
}

namespace {

// Where a request's answer lands. The handler holds it too: a call that Ctrl-C ended leaves its
// request pending, and close() answers that one later (channel_closed), after call() returned.
struct Answer {
    std::optional<std::error_code> error;
    Message reply;
};

std::optional<Message> wait_for(boost::asio::io_context& io,
                                const std::function<void(Client::ReplyHandler)>& send,
                                const Explain& explain) {
    auto answer = std::make_shared<Answer>();
    send([answer](std::error_code ec, Message& m) {
        answer->error = ec;
        answer->reply = std::move(m);
    });
    run_until_done(io, [&] { return answer->error.has_value(); });
    if (!answer->error)
        return std::nullopt;
    if (*answer->error)
        throw Failure(exit_code_for(*answer->error), explain(*answer->error, answer->reply));
    return std::move(answer->reply);
}

} // namespace

std::optional<Message> call(boost::asio::io_context& io, Client& client, const std::string& service,
                            const google::protobuf::Message& request,
                            std::chrono::milliseconds timeout, const Explain& explain) {
    return wait_for(
        io,
        [&](Client::ReplyHandler done) {
            client.request(service, request, timeout, std::move(done));
        },
        explain);
}

std::optional<Message> call(boost::asio::io_context& io, Client& client, const std::string& service,
                            std::string_view payload, std::chrono::milliseconds timeout,
                            const Explain& explain) {
    return wait_for(
        io,
        [&](Client::ReplyHandler done) {
            client.request_bytes(service, payload, timeout, std::move(done));
        },
        explain);
}

int exit_code_for(std::error_code ec) {
    if (ec == errc::broker_unavailable || ec == errc::channel_closed)
        return exit_code::unavailable;
    if (ec == errc::no_responders)
        return exit_code::no_responders;
    if (ec == errc::timeout)
        return exit_code::timeout;
    if (ec == errc::service_lost)
        return exit_code::service_lost;
    if (ec == errc::invalid_subject)
        return exit_code::usage;
    if (ec == errc::forbidden)
        return exit_code::forbidden;
    if (ec == errc::request_failed)
        return exit_code::request_failed;
    return exit_code::failure;
}

std::string explain(std::error_code ec, const std::string& what, const Global& g) {
    if (ec == errc::no_responders)
        return "no_responders: nobody serves " + what + " on " + g.endpoint +
               " (see `bus ls services`)";
    if (ec == errc::timeout)
        return "timeout: no answer from " + what + " in time (try a longer --timeout)";
    if (ec == errc::service_lost)
        return "service_lost: the instance of " + what + " handling the request went away";
    if (ec == errc::broker_unavailable || ec == errc::channel_closed)
        return "broker_unavailable: the broker at " + g.endpoint + " went away";
    if (ec == errc::request_failed)
        return what + " answered with an error";
    return what + ": " + ec.message();
}

Failure refusal(const std::string& what, const ClientEvent& e) {
    return Failure(exit_code_for(e.error), what + ": " + e.error.message() +
                                               (e.detail.empty() ? "" : " (" + e.detail + ")"));
}

std::chrono::milliseconds parse_duration(const std::string& text, const std::string& option) {
    std::size_t end = 0;
    double value = 0;
    try {
        value = std::stod(text, &end);
    } catch (const std::exception&) {
        end = 0;
    }
    const std::string unit = text.substr(end);
    double scale = -1;
    if (unit.empty() || unit == "s")
        scale = 1000;
    else if (unit == "ms")
        scale = 1;
    else if (unit == "m")
        scale = 60'000;
    else if (unit == "h")
        scale = 3'600'000;
    if (end == 0 || scale < 0 || !std::isfinite(value) || value < 0 || value * scale > 1e12)
        throw Failure(exit_code::usage,
                      option + ": '" + text + "' is not a duration (like 500ms, 2s, 1.5m, 1h)");
    return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(value * scale)));
}

std::optional<std::pair<std::string, std::string>> key_value(const std::string& text) {
    const auto eq = text.find('=');
    if (eq == std::string::npos || eq == 0)
        return std::nullopt;
    return std::pair(text.substr(0, eq), text.substr(eq + 1));
}

} // namespace bus::cli
