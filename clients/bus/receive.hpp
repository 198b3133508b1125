// What the receiving commands (sub, monitor; cluster logs -f) run on: their patterns, their
// lines in arrival order while a type is asked of busd (ArrivalQueue), the client's events
// while they run, and how they end (receive_until).
#pragma once

#include "connect.hpp"
#include "types.hpp"

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>

namespace bus::cli {

// What a receiving command (sub, monitor) prints, one line per message on stdout, in arrival
// order: a message whose type neither the binary nor --raw settles waits for busd's registry to
// answer (Types::fetch), and the messages after it wait too. Done after `count` lines (0: no
// limit) or stop().
class ArrivalQueue {
public:
    // One message's line (and whatever else a command does with it: monitor's --pcap). The
    // envelope is the queue's, dropped right after: a Format may use it as scratch space.
    using Format = std::function<std::string(std::chrono::system_clock::time_point, v1::Envelope&)>;
    ArrivalQueue(Types& types, Client& client, bool raw, std::uint64_t count, Format format)
        : types_(types), client_(client), raw_(raw), count_(count), format_(std::move(format)) {}
    ArrivalQueue(const ArrivalQueue&) = delete;
    ArrivalQueue& operator=(const ArrivalQueue&) = delete;

    // A message that arrived now (taken: a handler's message is not used after it returns):
    // queued, then every line that is ready is printed.
    void push(v1::Envelope envelope);
    void stop() { done_ = true; }
    // For receive_until().
    bool& done() { return done_; }
    const std::uint64_t& shown() const { return shown_; }

private:
    struct Entry {
        std::chrono::system_clock::time_point at;
        v1::Envelope envelope;
    };
    bool ready(const Entry& e) const;
    void drain();

    Types& types_;
    Client& client_;
    bool raw_;
    std::uint64_t count_;
    Format format_;
    std::deque<Entry> queue_;
    std::uint64_t shown_ = 0;
    bool done_ = false;
};

// Failure(usage) unless `pattern` is one to subscribe or monitor with, saying what one is.
void check_pattern(const std::string& pattern);

// What a receiving command (sub, monitor) does with its client's events: the broker refusing
// it (`refused`: what it refused) sets `failed`, which receive_until throws, and stops `queue`;
// a lost broker and what the broker dropped for it (`dropped`: what those are) are said on
// stderr.
void report_events(Client& client, const Global& g, ArrivalQueue& queue,
                   std::optional<Failure>& failed, const std::string& refused,
                   const std::string& dropped);

// The end of a receiving command (sub, monitor): runs `io` until `done` or until `timeout`
// passes, then closes `client`. Throws `failed` if a handler set it, else Failure(timeout) when
// `count` messages were asked for and fewer were shown in time (`timeout_text`: the flag).
void receive_until(boost::asio::io_context& io, Client& client,
                   std::optional<std::chrono::milliseconds> timeout, bool& done,
                   const std::optional<Failure>& failed, const std::uint64_t& shown,
                   std::uint64_t count, const std::string& timeout_text);

} // namespace bus::cli
