// Patterns, ArrivalQueue, the events and the end of receiving commands (receive.hpp).
#include "receive.hpp"

#include "loop.hpp"

#include <bus/subject.hpp>

#include <boost/asio/steady_timer.hpp>

#include <cstdio>

namespace bus::cli {

bool ArrivalQueue::ready(const Entry& e) const {
    if (raw_ || e.envelope.type_url().empty() || e.envelope.type_url() == json_type_url)
        return true;
    const auto name = type_name_of(e.envelope.type_url());
    return types_.find_local(name) || types_.fetched(name);
}

void ArrivalQueue::push(v1::Envelope envelope) {
    if (done_)
        return;
    queue_.push_back({std::chrono::system_clock::now(), std::move(envelope)});
    const auto& e = queue_.back();
    if (!ready(e))
        types_.fetch(client_, type_name_of(e.envelope.type_url()), [this] { drain(); });
    drain();
}

void ArrivalQueue::drain() {
    while (!queue_.empty() && !done_ && ready(queue_.front())) {
        const auto line = format_(queue_.front().at, queue_.front().envelope);
        std::fwrite(line.data(), 1, line.size(), stdout);
        std::fputc('\n', stdout);
        std::fflush(stdout);
        queue_.pop_front();
        if (count_ && ++shown_ >= count_)
            done_ = true;
    }
}

void check_pattern(const std::string& pattern) {
    if (!valid_pattern(pattern))
        throw Failure(exit_code::usage,
                      "'" + pattern +
                          "' is not a valid pattern: dot-separated tokens of printable ASCII, "
                          "`*` for one token, `>` as the last token for the rest");
}

void report_events(Client& client, const Global& g, ArrivalQueue& queue,
                   std::optional<Failure>& failed, const std::string& refused,
                   const std::string& dropped) {
    client.on_event([&g, &queue, &failed, refused, dropped](const ClientEvent& e) {
        switch (e.kind) {
        case ClientEvent::Kind::error:
            failed = refusal(refused, e);
            queue.stop();
            break;
        case ClientEvent::Kind::disconnected:
            std::fprintf(stderr, "bus: lost the broker at %s; waiting for it to come back\n",
                         g.endpoint.c_str());
            break;
        case ClientEvent::Kind::slow_consumer:
            std::fprintf(stderr, "bus: the broker dropped %llu %s for us (slow consumer)\n",
                         static_cast<unsigned long long>(e.dropped), dropped.c_str());
            break;
        case ClientEvent::Kind::connected:
            break;
        }
    });
}

void receive_until(boost::asio::io_context& io, Client& client,
                   std::optional<std::chrono::milliseconds> timeout, bool& done,
                   const std::optional<Failure>& failed, const std::uint64_t& shown,
                   std::uint64_t count, const std::string& timeout_text) {
    boost::asio::steady_timer timer(io);
    bool timed_out = false;
    if (timeout) {
        timer.expires_after(*timeout);
        timer.async_wait([&](const boost::system::error_code& ec) {
            if (!ec) {
                timed_out = true;
                done = true;
            }
        });
    }
    run_until_done(io, [&] { return done; });
    timer.cancel();
    client.close();
    if (failed)
        throw *failed;
    if (timed_out && count && shown < count)
        throw Failure(exit_code::timeout, "timeout: " + std::to_string(shown) + " of " +
                                              std::to_string(count) + " messages arrived in " +
                                              timeout_text);
}

} // namespace bus::cli
