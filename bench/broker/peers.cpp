#include "peers.hpp"

#include "common/report.hpp"

#include <cstdlib>
#include <stdexcept>

namespace bench::broker {

nlohmann::json to_json(const PubResult& r) {
    return {{"sent", r.sent},
            {"start", r.start},
            {"end", r.end},
            {"max_send_ms", r.max_send_ms},
            {"max_blocked_ms", r.max_blocked_ms},
            {"max_wait_ms", r.max_wait_ms},
            {"refused", r.refused}};
}

nlohmann::json to_json(const SubResult& r) {
    return {{"count", r.count},
            {"malformed", r.malformed},
            {"first", r.first},
            {"last", r.last},
            {"max_gap_ms", r.max_gap_ms},
            {"told_dropped", r.told_dropped},
            {"disconnected", r.disconnected}};
}

nlohmann::json to_json(const ReqResult& r) {
    return {{"count", r.count}, {"seconds", r.seconds}, {"p50_us", r.p50_us}, {"p99_us", r.p99_us}};
}

PubResult pub_result(const nlohmann::json& j) {
    PubResult r;
    r.sent = j.at("sent");
    r.start = j.at("start");
    r.end = j.at("end");
    r.max_send_ms = j.at("max_send_ms");
    r.max_blocked_ms = j.at("max_blocked_ms");
    r.max_wait_ms = j.at("max_wait_ms");
    r.refused = j.at("refused");
    return r;
}

SubResult sub_result(const nlohmann::json& j) {
    SubResult r;
    r.count = j.at("count");
    r.malformed = j.at("malformed");
    r.first = j.at("first");
    r.last = j.at("last");
    r.max_gap_ms = j.at("max_gap_ms");
    r.told_dropped = j.at("told_dropped");
    r.disconnected = j.at("disconnected");
    return r;
}

ReqResult req_result(const nlohmann::json& j) {
    ReqResult r;
    r.count = j.at("count");
    r.seconds = j.at("seconds");
    r.p50_us = j.at("p50_us");
    r.p99_us = j.at("p99_us");
    return r;
}

void SubscriberCounter::on_control(const std::string& line) {
    if (line.starts_with("done ")) {
        done_ = true;
        expected_ = std::strtoull(line.c_str() + 5, nullptr, 10);
        done_at_ = now_s();
    }
}

bool SubscriberCounter::finished() const {
    if (!done_)
        return false;
    if (result_.count >= expected_)
        return true;
    const double now = now_s();
    const double last_news = std::max(done_at_, result_.last);
    return now - last_news >= quiet || now - done_at_ >= cap;
}

RoundTrips::RoundTrips(const ReqSpec& spec)
    : measure_from_(now_s() + spec.warmup), deadline_(measure_from_ + spec.seconds),
      last_done_(measure_from_) {}

std::uint64_t RoundTrips::sent() {
    sent_at_.push_back(now_s());
    ++outstanding_;
    return sent_at_.size() - 1;
}

bool RoundTrips::answered(std::uint64_t seq) {
    const double now = now_s();
    if (seq >= sent_at_.size())
        throw std::runtime_error("a reply to no request");
    --outstanding_;
    if (sent_at_[seq] >= measure_from_) {
        samples_.push_back((now - sent_at_[seq]) * 1e6);
        ++count_;
        last_done_ = now;
    }
    return now < deadline_;
}

ReqResult RoundTrips::result() {
    ReqResult r;
    r.count = count_;
    r.seconds = last_done_ - measure_from_;
    r.p50_us = percentile(samples_, 0.50);
    r.p99_us = percentile(samples_, 0.99);
    return r;
}

std::string make_payload(std::size_t size) {
    std::string payload(size, 'x');
    for (std::size_t i = 0; i < size; ++i)
        payload[i] = static_cast<char>('a' + i % 26);
    return payload;
}

} // namespace bench::broker
