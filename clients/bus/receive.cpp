// ArrivalQueue and receive_until (receive.hpp).
#include "receive.hpp"

#include "loop.hpp"

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
