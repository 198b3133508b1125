// A small NATS client: the text protocol over one TCP connection (INFO, CONNECT, PUB, SUB,
// MSG, PING, PONG, +OK/-ERR), enough for publishers, subscribers and request/reply through a
// reply inbox. Writes are batched in a buffer and written on flush(); reads take what the
// socket has and hand over every whole message. The socket is non-blocking after connect(), so
// every wait has a deadline.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace bench::broker {

class NatsConnection {
public:
    struct Msg {
        std::string_view subject, reply, payload;
        std::uint64_t sid;
    };

    NatsConnection() = default;
    NatsConnection(const NatsConnection&) = delete;
    NatsConnection& operator=(const NatsConnection&) = delete;
    ~NatsConnection();

    // Connects to 127.0.0.1:port, reads INFO, sends CONNECT (no echo, not verbose) and waits
    // for the answer to a PING.
    void connect(int port, const std::string& name);
    int fd() const { return fd_; }

    void pub(std::string_view subject, std::string_view reply, std::string_view payload);
    void sub(std::string_view subject, std::uint64_t sid);
    void ping() { out_ += "PING\r\n"; }
    std::size_t pending() const { return out_.size() - out_begin_; }

    // Writes what is buffered; false if `deadline` (now_s()) came first. `blocked_s` gets the
    // time spent waiting for the socket to take more.
    bool flush(double deadline, double* blocked_s = nullptr);

    // Reads what the socket has (without waiting) and calls on_msg(const Msg&) for each whole
    // message. Answers the server's PINGs (buffered: flush() sends them). False at EOF.
    template <class OnMsg>
    bool read_available(OnMsg&& on_msg);

    // Sends PING and reads (handing messages to nobody) until its PONG, or throws at the deadline.
    void ping_pong(double timeout_s);
    std::uint64_t pongs() const { return pongs_; }

private:
    bool fill(); // one read(); false at EOF; throws on errors
    // Parses one protocol line or message at in_begin_; false if more bytes are needed.
    template <class OnMsg>
    bool parse_one(OnMsg& on_msg);
    [[noreturn]] void protocol_error(std::string_view line);

    int fd_ = -1;
    std::string out_;
    std::size_t out_begin_ = 0;
    std::vector<char> in_ = std::vector<char>(1 << 20);
    std::size_t in_begin_ = 0, in_end_ = 0;
    std::uint64_t pongs_ = 0;
};

// --- inline: the hot path ---------------------------------------------------------------------

template <class OnMsg>
bool NatsConnection::read_available(OnMsg&& on_msg) {
    for (;;) {
        while (parse_one(on_msg)) {
        }
        const std::size_t before = in_end_;
        if (!fill())
            return false;
        if (in_end_ == before)
            return true; // nothing more now
    }
}

template <class OnMsg>
bool NatsConnection::parse_one(OnMsg& on_msg) {
    const char* begin = in_.data() + in_begin_;
    const char* end = in_.data() + in_end_;
    const auto* nl = static_cast<const char*>(std::memchr(begin, '\n', end - begin));
    if (!nl)
        return false;
    std::string_view line(begin, static_cast<std::size_t>(nl - begin));
    if (!line.empty() && line.back() == '\r')
        line.remove_suffix(1);
    if (line.size() > 4 && line.starts_with("MSG ")) {
        // MSG <subject> <sid> [reply-to] <#bytes>
        std::string_view tokens[4];
        int count = 0;
        std::size_t pos = 4;
        while (pos < line.size() && count < 4) {
            const std::size_t space = line.find(' ', pos);
            const std::size_t stop = space == std::string_view::npos ? line.size() : space;
            if (stop > pos)
                tokens[count++] = line.substr(pos, stop - pos);
            pos = stop + 1;
        }
        if (count < 3)
            protocol_error(line);
        std::size_t bytes = 0;
        for (char c : tokens[count - 1])
            bytes = bytes * 10 + static_cast<std::size_t>(c - '0');
        const char* payload = nl + 1;
        if (static_cast<std::size_t>(end - payload) < bytes + 2)
            return false;
        std::uint64_t sid = 0;
        for (char c : tokens[1])
            sid = sid * 10 + static_cast<std::uint64_t>(c - '0');
        Msg msg{tokens[0], count == 4 ? tokens[2] : std::string_view(),
                std::string_view(payload, bytes), sid};
        in_begin_ = static_cast<std::size_t>(payload + bytes + 2 - in_.data());
        on_msg(static_cast<const Msg&>(msg));
        return true;
    }
    in_begin_ = static_cast<std::size_t>(nl + 1 - in_.data());
    if (line == "PING")
        out_ += "PONG\r\n";
    else if (line == "PONG")
        ++pongs_;
    else if (line.starts_with("-ERR"))
        protocol_error(line);
    // +OK, INFO: nothing to do
    return true;
}

} // namespace bench::broker
