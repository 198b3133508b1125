// How a `bus` command meets busd and how it ends: the global options, the exit codes and
// Failure that carries one, connecting with an error that says what was tried, call() for a
// request whose answer the command waits for, and the words for the errors requests get.
#pragma once

#include <utility> // before Asio (Boost 1.74 misses it: DESIGN.md)

#include <bus/client.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

namespace bus::cli {

// Exit codes, the same for every command (listed by `bus --help`).
namespace exit_code {
inline constexpr int ok = 0;
inline constexpr int failure = 1;        // anything not named below
inline constexpr int usage = 2;          // bad flags or input: unknown type, bad JSON, bad pattern
inline constexpr int unavailable = 3;    // no broker answered on the endpoint
inline constexpr int no_responders = 4;  // nobody serves the service
inline constexpr int timeout = 5;        // no reply (or not enough messages) before the deadline
inline constexpr int service_lost = 6;   // the instance handling the request went away
inline constexpr int request_failed = 7; // the service answered with an error
inline constexpr int forbidden = 8;      // the broker's access rules refused it
} // namespace exit_code

extern const char* const exit_codes_help;

// Ends the command: `bus: MESSAGE` on stderr and the exit code.
struct Failure : std::runtime_error {
    Failure(int code_, const std::string& message) : std::runtime_error(message), code(code_) {}
    int code;
};

struct Global {
    std::string endpoint; // empty until resolved: -e, else BUS_ENDPOINT, else the default
    bool json = false;
    bool no_color = false;
    double connect_timeout_s = 2.0;

    bool color() const; // stdout is a terminal, NO_COLOR unset and no --no-color
};

// A connected, welcomed client, or Failure(unavailable) naming the endpoint and what to do.
std::shared_ptr<Client> connect(boost::asio::io_context& io, const Global& g,
                                const std::string& name);

// What a command says when its request failed: `reply` is the error busd or the service sent
// (its "detail" header may say more), empty when the error arose in this process (a timeout,
// a lost broker).
using Explain = std::function<std::string(std::error_code error, const Message& reply)>;

// Sends a request to `service` and runs `io` until it is answered: the reply; nullopt when
// SIGINT/SIGTERM came first (what Ctrl-C means is the command's to say); Failure with the
// error's exit code and `explain`'s words when the request failed.
std::optional<Message> call(boost::asio::io_context& io, Client& client, const std::string& service,
                            const google::protobuf::Message& request,
                            std::chrono::milliseconds timeout, const Explain& explain);
// The same with a raw payload.
std::optional<Message> call(boost::asio::io_context& io, Client& client, const std::string& service,
                            std::string_view payload, std::chrono::milliseconds timeout,
                            const Explain& explain);

// Exit code and text for an error a request or the broker reported.
int exit_code_for(std::error_code ec);
std::string explain(std::error_code ec, const std::string& what, const Global& g);
// The end of a command whose message, subscription or monitor the broker refused (an error
// event): "`what`: the error (its detail)".
Failure refusal(const std::string& what, const ClientEvent& e);

// "250ms", "2s", "1.5m", "1h"; a bare number is seconds. Throws Failure(usage).
std::chrono::milliseconds parse_duration(const std::string& text, const std::string& option);
// KEY=VALUE split at its first '=' (VALUE may be empty); nullopt without '=' or without KEY.
std::optional<std::pair<std::string, std::string>> key_value(const std::string& text);

} // namespace bus::cli
