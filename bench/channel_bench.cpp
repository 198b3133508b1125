// channel-bench: bus::Channel beside its peers, in one run on one machine.
//
// Every case runs two processes over one socketpair (AF_UNIX, SOCK_STREAM), this one and a
// forked one (for Node: a Node parent and its forked child). Rates are measured on the
// receiver, from the first message to the end of the stream, so the sender's start-up does
// not count. Round trips are timed by the side that pings. The peers:
//   raw   the same framing (u32 LE length + bytes), written in 128 KiB batches and walked by
//         length with no per-message work: the physical limit of the socket;
//   floor raw, but each frame a protobuf bus.v1.Envelope serialized from and parsed into
//         reused objects: the least any implementation of this wire format can do;
//   node  Node.js process.send() with 'json' serialization between a parent and a forked child
//         (bench/node/channel_peer.js, run as a subprocess that prints one JSON line).
//
// Ends with one `bar:` line per target. Exits 0 whether or not the bars are met; non-zero only
// when a case broke (a peer failed, a message was lost or malformed, a case hung).
//
//   channel-bench [--seconds S] [--rounds R] [--round-trips N] [--only NAME[,NAME...]]
//                 [--node PATH] [--node-script PATH]
// Each case runs R times (default 3), in rounds; the tables show the median.
// --only keeps the cases whose name contains one of the NAMEs (throughput.bus.64B, rtt.raw,
// fds.node, ...): a single case is what a profiler wants.
#include "common/options.hpp"
#include "common/process.hpp"
#include "common/report.hpp"
#include "common/watchdog.hpp"

#include <bus/channel.hpp>
#include <bus/unique_fd.hpp>
#include <bus/v1/envelope.pb.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef BUS_BENCH_NODE_SCRIPT
#define BUS_BENCH_NODE_SCRIPT "bench/node/channel_peer.js"
#endif

namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

constexpr std::size_t small_payload = 64;
constexpr std::size_t large_payload = 4096;
// Each fd travels with a message this big, in every peer.
constexpr std::size_t fd_message_payload = 8;
constexpr std::size_t frame_header = 4;
// One write() per batch: at 128 KiB the syscall is a rounding error per message.
constexpr std::size_t raw_batch_bytes = 128 * 1024;
// More than the socket's default buffer (208 KiB), so one read() drains it.
constexpr std::size_t raw_read_bytes = 256 * 1024;
// Senders read the clock once per this many messages, so that timing costs them nothing.
constexpr int messages_per_clock_check = 64;

// --seconds, --rounds and --only, and channel-bench's own.
struct Options : bench::Options {
    int round_trips = 20000;
    int warmup_round_trips = 2000;
    std::string node = "node";
    std::string node_script = BUS_BENCH_NODE_SCRIPT;
};

struct Rate {
    std::uint64_t count = 0;
    double seconds = 0;
    double per_second() const { return seconds > 0 ? static_cast<double>(count) / seconds : 0; }
};

struct Latency {
    std::size_t round_trips = 0;
    double p50_us = 0;
    double p99_us = 0;
};

using bench::throw_errno;
using bench::write_all;

double seconds_between(Clock::time_point from, Clock::time_point to) {
    return std::chrono::duration<double>(to - from).count();
}

Clock::time_point deadline_after(double seconds) {
    return Clock::now() +
           std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

void put_le32(char* out, std::uint32_t n) {
    for (int i = 0; i < 4; ++i)
        out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
}

std::uint32_t get_le32(const char* in) {
    std::uint32_t n = 0;
    for (int i = 0; i < 4; ++i)
        n |= static_cast<std::uint32_t>(static_cast<unsigned char>(in[i])) << (8 * i);
    return n;
}

// --- processes ------------------------------------------------------------------------------

struct Peer {
    pid_t pid;
    bus::UniqueFd socket; // this process's end
};

// Forks a process that runs `body` on its end of a new socketpair and exits 0, or 1 if `body`
// throws. It dies with the bench.
Peer fork_peer(const std::function<void(bus::UniqueFd)>& body) {
    const auto peer = bench::fork_socket_peer("channel-bench: peer", [&](int socket) {
        body(bus::UniqueFd(socket));
        return 0;
    });
    return {peer.pid, bus::UniqueFd(peer.socket)};
}

void reap(pid_t pid) {
    if (!bench::wait_child(pid))
        throw std::runtime_error("the peer process failed");
}

void check_delivery(const Rate& rate, std::uint64_t malformed, std::error_code failure) {
    if (failure)
        throw std::system_error(failure, "receiver");
    if (malformed)
        throw std::runtime_error(std::to_string(malformed) + " malformed messages");
    if (rate.count < 2 || rate.seconds <= 0)
        throw std::runtime_error("no messages arrived");
}

// --- throughput -----------------------------------------------------------------------------

// The sending half of the bus cases: calls `send_one` (which returns what Channel::send*
// returned) until `seconds` are up, following Node's contract as an application would: send
// until send() says the queue is full, resume on drain. Then closes, and returns once the
// channel has flushed.
template <class SendOne>
void run_bus_sender(bus::UniqueFd socket, double seconds, SendOne send_one) {
    asio::io_context io;
    auto channel = bus::Channel::adopt(io, std::move(socket)).value();
    const auto deadline = deadline_after(seconds);
    bool closing = false;
    std::error_code failure;
    // The clock is read on every resume too, because at 4 KiB the queue fills before
    // messages_per_clock_check messages.
    std::function<void()> pump = [&] {
        while (!closing) {
            if (Clock::now() >= deadline) {
                closing = true;
                channel->close(); // from inside on_drain too: close() delivers what was sent
                return;
            }
            for (int i = 0; i < messages_per_clock_check; ++i)
                if (!send_one(*channel))
                    return;
        }
    };
    channel->on_drain([&] { pump(); });
    channel->on_disconnect([&](std::error_code ec) { failure = ec; });
    asio::post(io, [&] { pump(); });
    io.run();
    if (failure)
        throw std::system_error(failure, "bus sender");
}

Rate throughput_bus(std::size_t size, double seconds) {
    auto peer = fork_peer([size, seconds](bus::UniqueFd socket) {
        asio::io_context io;
        const std::string payload(size, 'x');
        run_bus_sender(std::move(socket), seconds,
                       [&](bus::Channel& channel) { return channel.send_bytes(payload); });
    });

    asio::io_context io;
    auto channel = bus::Channel::adopt(io, std::move(peer.socket)).value();
    Rate rate;
    Clock::time_point first;
    std::uint64_t malformed = 0;
    std::error_code failure;
    channel->on_message([&](bus::Message& message) {
        if (rate.count++ == 0)
            first = Clock::now();
        malformed += message.payload().size() != size;
    });
    channel->on_disconnect([&](std::error_code ec) {
        rate.seconds = seconds_between(first, Clock::now());
        failure = ec;
    });
    io.run();
    reap(peer.pid);
    check_delivery(rate, malformed, failure);
    return rate;
}

// Fills a batch with frames from `encode` (which returns the bytes it wrote, 0 when the frame
// does not fit) and writes it with one write(), until the time is up; then closes.
template <class Encode>
void send_batches(bus::UniqueFd socket, double seconds, Encode encode) {
    std::vector<char> batch(raw_batch_bytes);
    const auto deadline = deadline_after(seconds);
    do {
        std::size_t used = 0;
        while (const std::size_t n = encode(batch.data() + used, batch.size() - used))
            used += n;
        write_all(socket.get(), {batch.data(), used});
    } while (Clock::now() < deadline);
}

// Walks the frames of the stream to its end, calling `accept(body, size)` on each; a frame
// split across reads is moved to the front of the buffer and completed by the next read.
template <class Accept>
Rate receive_batches(bus::UniqueFd socket, Accept accept) {
    std::vector<char> buf(raw_read_bytes);
    std::size_t have = 0;
    Rate rate;
    std::uint64_t malformed = 0;
    Clock::time_point first;
    for (;;) {
        const ssize_t n = ::read(socket.get(), buf.data() + have, buf.size() - have);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            throw_errno("read");
        }
        if (n == 0)
            break;
        if (rate.count == 0 && have == 0)
            first = Clock::now();
        have += static_cast<std::size_t>(n);
        std::size_t pos = 0;
        while (have - pos >= frame_header) {
            const std::uint32_t len = get_le32(buf.data() + pos);
            if (len > buf.size() - frame_header)
                throw std::runtime_error("frame length out of range");
            if (have - pos - frame_header < len)
                break;
            malformed += !accept(buf.data() + pos + frame_header, len);
            ++rate.count;
            pos += frame_header + len;
        }
        std::memmove(buf.data(), buf.data() + pos, have - pos);
        have -= pos;
    }
    rate.seconds = seconds_between(first, Clock::now());
    if (have != 0)
        throw std::runtime_error("stream ended mid-frame");
    check_delivery(rate, malformed, {});
    return rate;
}

Rate throughput_raw(std::size_t size, double seconds) {
    auto peer = fork_peer([size, seconds](bus::UniqueFd socket) {
        const std::string payload(size, 'x');
        send_batches(std::move(socket), seconds, [&](char* out, std::size_t room) -> std::size_t {
            if (room < frame_header + size)
                return 0;
            put_le32(out, static_cast<std::uint32_t>(size));
            std::memcpy(out + frame_header, payload.data(), size);
            return frame_header + size;
        });
    });
    const Rate rate = receive_batches(std::move(peer.socket),
                                      [size](const char*, std::size_t len) { return len == size; });
    reap(peer.pid);
    return rate;
}

Rate throughput_floor(std::size_t size, double seconds) {
    auto peer = fork_peer([size, seconds](bus::UniqueFd socket) {
        const std::string payload(size, 'x');
        bus::v1::Envelope envelope;
        envelope.set_kind(bus::v1::KIND_DATA);
        send_batches(std::move(socket), seconds, [&](char* out, std::size_t room) -> std::size_t {
            if (room <= frame_header)
                return 0;
            // Set per message, as a sender with a new payload each time must.
            envelope.set_payload(payload);
            if (!envelope.SerializeToArray(out + frame_header,
                                           static_cast<int>(room - frame_header)))
                return 0;
            const auto n = static_cast<std::uint32_t>(envelope.GetCachedSize());
            put_le32(out, n);
            return frame_header + n;
        });
    });
    bus::v1::Envelope envelope;
    const Rate rate =
        receive_batches(std::move(peer.socket), [&](const char* body, std::size_t len) {
            return envelope.ParseFromArray(body, static_cast<int>(len)) &&
                   envelope.payload().size() == size;
        });
    reap(peer.pid);
    return rate;
}

// --- the Node peer --------------------------------------------------------------------------

// Runs the Node script with `args` and returns the JSON line it prints last.
nlohmann::json run_node(const Options& options, const std::vector<std::string>& args) {
    std::vector<std::string> argv{options.node, options.node_script};
    argv.insert(argv.end(), args.begin(), args.end());
    bool exited_0 = false;
    const std::string output = bench::run_for_output(argv, exited_0);
    const std::string last_line = output.substr(output.rfind('\n') + 1);
    auto result = nlohmann::json::parse(last_line, nullptr, /*allow_exceptions=*/false);
    if (result.is_object() && result.contains("error"))
        throw std::runtime_error("node: " + result["error"].dump());
    if (!exited_0 || !result.is_object())
        throw std::runtime_error("node failed; it printed: " + output);
    return result;
}

Rate node_rate(const nlohmann::json& result) {
    Rate rate{result.at("messages").get<std::uint64_t>(), result.at("seconds").get<double>()};
    check_delivery(rate, 0, {});
    return rate;
}

Rate throughput_node(const Options& options, std::size_t size) {
    return node_rate(
        run_node(options, {"throughput", std::to_string(size), std::to_string(options.seconds)}));
}

// --- round trips ----------------------------------------------------------------------------

Latency rtt_bus(const Options& options) {
    auto peer = fork_peer([](bus::UniqueFd socket) {
        asio::io_context io;
        auto channel = bus::Channel::adopt(io, std::move(socket)).value();
        std::error_code failure;
        channel->on_message([&](bus::Message& message) { channel->send_bytes(message.payload()); });
        channel->on_disconnect([&](std::error_code ec) { failure = ec; });
        io.run();
        if (failure)
            throw std::system_error(failure, "bus echo");
    });

    asio::io_context io;
    auto channel = bus::Channel::adopt(io, std::move(peer.socket)).value();
    const std::string payload(small_payload, 'x');
    const int total = options.warmup_round_trips + options.round_trips;
    std::vector<double> samples_us;
    samples_us.reserve(static_cast<std::size_t>(options.round_trips));
    int done = 0;
    std::uint64_t malformed = 0;
    std::error_code failure;
    Clock::time_point sent_at;
    channel->on_message([&](bus::Message& message) {
        const auto now = Clock::now();
        malformed += message.payload().size() != small_payload;
        if (done++ >= options.warmup_round_trips)
            samples_us.push_back(std::chrono::duration<double, std::micro>(now - sent_at).count());
        if (done == total)
            return channel->close();
        sent_at = Clock::now();
        channel->send_bytes(payload);
    });
    channel->on_disconnect([&](std::error_code ec) { failure = ec; });
    asio::post(io, [&] {
        sent_at = Clock::now();
        channel->send_bytes(payload);
    });
    io.run();
    reap(peer.pid);
    if (failure || malformed || done != total)
        throw std::runtime_error("bus round trips failed");
    return {samples_us.size(), bench::percentile(samples_us, 0.50),
            bench::percentile(samples_us, 0.99)};
}

// One frame from a blocking socket into `buf`; false at a clean end of stream. With one
// message in flight a read never brings more than one frame.
bool read_frame(int fd, std::vector<char>& buf, std::size_t& size) {
    std::size_t have = 0;
    for (;;) {
        const ssize_t n = ::read(fd, buf.data() + have, buf.size() - have);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            throw_errno("read");
        }
        if (n == 0) {
            if (have != 0)
                throw std::runtime_error("stream ended mid-frame");
            return false;
        }
        have += static_cast<std::size_t>(n);
        if (have >= frame_header) {
            size = frame_header + get_le32(buf.data());
            if (size > buf.size())
                throw std::runtime_error("frame length out of range");
            if (have == size)
                return true;
            if (have > size)
                throw std::runtime_error("more than one frame in flight");
        }
    }
}

Latency rtt_raw(const Options& options) {
    auto peer = fork_peer([](bus::UniqueFd socket) {
        std::vector<char> buf(64 * 1024);
        std::size_t size = 0;
        while (read_frame(socket.get(), buf, size))
            write_all(socket.get(), {buf.data(), size});
    });

    std::string frame(frame_header + small_payload, 'x');
    put_le32(frame.data(), static_cast<std::uint32_t>(small_payload));
    std::vector<char> buf(64 * 1024);
    std::vector<double> samples_us;
    samples_us.reserve(static_cast<std::size_t>(options.round_trips));
    const int fd = peer.socket.get();
    for (int i = 0; i < options.warmup_round_trips + options.round_trips; ++i) {
        const auto sent_at = Clock::now();
        write_all(fd, frame);
        std::size_t size = 0;
        if (!read_frame(fd, buf, size) || size != frame.size())
            throw std::runtime_error("raw echo failed");
        const auto now = Clock::now();
        if (i >= options.warmup_round_trips)
            samples_us.push_back(std::chrono::duration<double, std::micro>(now - sent_at).count());
    }
    peer.socket.reset();
    reap(peer.pid);
    return {samples_us.size(), bench::percentile(samples_us, 0.50),
            bench::percentile(samples_us, 0.99)};
}

Latency rtt_node(const Options& options) {
    const auto result = run_node(options, {"rtt", std::to_string(small_payload),
                                           std::to_string(options.round_trips),
                                           std::to_string(options.warmup_round_trips)});
    return {result.at("round_trips").get<std::size_t>(), result.at("p50_us").get<double>(),
            result.at("p99_us").get<double>()};
}

// --- file descriptors -----------------------------------------------------------------------

bus::UniqueFd open_dev_null() {
    bus::UniqueFd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!fd)
        throw_errno("open /dev/null");
    return fd;
}

Rate fds_bus(double seconds) {
    auto peer = fork_peer([seconds](bus::UniqueFd socket) {
        const auto passed = open_dev_null();
        const std::string payload(fd_message_payload, 'x');
        run_bus_sender(std::move(socket), seconds, [&](bus::Channel& channel) {
            return channel.send_bytes(payload, bus::Fds{passed.get()});
        });
    });

    asio::io_context io;
    auto channel = bus::Channel::adopt(io, std::move(peer.socket)).value();
    Rate rate;
    Clock::time_point first;
    std::uint64_t malformed = 0;
    std::error_code failure;
    // The fds the handler leaves in the message are closed by the channel after it returns.
    channel->on_message([&](bus::Message& message) {
        if (rate.count == 0)
            first = Clock::now();
        rate.count += message.fds.size();
        malformed += message.fds.size() != 1;
    });
    channel->on_disconnect([&](std::error_code ec) {
        rate.seconds = seconds_between(first, Clock::now());
        failure = ec;
    });
    io.run();
    reap(peer.pid);
    check_delivery(rate, malformed, failure);
    return rate;
}

Rate fds_raw(double seconds) {
    auto peer = fork_peer([seconds](bus::UniqueFd socket) {
        const auto passed = open_dev_null();
        std::array<char, frame_header + fd_message_payload> frame{};
        put_le32(frame.data(), fd_message_payload);
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
        const auto deadline = deadline_after(seconds);
        do {
            for (int i = 0; i < messages_per_clock_check; ++i) {
                iovec iov{frame.data(), frame.size()};
                msghdr msg{};
                msg.msg_iov = &iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control;
                msg.msg_controllen = sizeof control;
                cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
                cmsg->cmsg_level = SOL_SOCKET;
                cmsg->cmsg_type = SCM_RIGHTS;
                cmsg->cmsg_len = CMSG_LEN(sizeof(int));
                const int fd = passed.get();
                std::memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
                // A short write would tear a frame; the kernel does not split 12 bytes.
                if (::sendmsg(socket.get(), &msg, MSG_NOSIGNAL) !=
                    static_cast<ssize_t>(frame.size()))
                    throw_errno("sendmsg");
            }
        } while (Clock::now() < deadline);
    });

    std::vector<char> buf(64 * 1024);
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 253)];
    Rate rate;
    Clock::time_point first;
    std::uint64_t bytes = 0;
    for (;;) {
        iovec iov{buf.data(), buf.size()};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        const ssize_t n = ::recvmsg(peer.socket.get(), &msg, MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            throw_errno("recvmsg");
        }
        if (n == 0)
            break;
        bytes += static_cast<std::uint64_t>(n);
        for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (std::size_t i = 0; i < count; ++i) {
                int fd;
                std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                ::close(fd);
            }
            if (rate.count == 0)
                first = Clock::now();
            rate.count += count;
        }
    }
    rate.seconds = seconds_between(first, Clock::now());
    reap(peer.pid);
    const std::uint64_t malformed = bytes != rate.count * (frame_header + fd_message_payload);
    check_delivery(rate, malformed, {});
    return rate;
}

Rate fds_node(const Options& options) {
    return node_rate(run_node(options, {"fds", std::to_string(options.seconds)}));
}

// --- the report -----------------------------------------------------------------------------

struct Results {
    // per second, by "SIZE.peer" (throughput) or peer (fds)
    std::map<std::string, bench::Samples> throughput;
    std::map<std::string, bench::Samples> fds;
    std::map<std::string, bench::Samples> rtt_p50_us;
    std::map<std::string, bench::Samples> rtt_p99_us;
};

const std::vector<std::string> throughput_peers{"bus", "raw", "floor", "node"};
const std::vector<std::string> rtt_peers{"bus", "raw", "node"};
const std::vector<std::string> fd_peers{"bus", "raw", "node"};

void print_report(const Options& options, const Results& results) {
    std::printf(
        "channel benchmark: bus::Channel beside its peers, two processes over a socketpair.\n"
        "Rates are measured on the receiver, first message to end of stream, %.1f s per"
        " case;\neach figure is the median of %d rounds (spread = (max - min) / median)."
        " MB = 10^6 bytes of payload.\n\n",
        options.seconds, options.rounds);
    if (!results.throughput.empty()) {
        std::printf("1. one-way throughput\n");
        bench::Table table({{"payload", bench::Align::left},
                            {"peer", bench::Align::left},
                            {"msgs/s"},
                            {"MB/s"},
                            {"spread"},
                            {"bus/peer"}});
        for (const std::size_t size : {small_payload, large_payload}) {
            const auto bus = bench::median_of(results.throughput, bench::size_name(size) + ".bus");
            for (const auto& name : throughput_peers) {
                const auto it = results.throughput.find(bench::size_name(size) + "." + name);
                if (it == results.throughput.end())
                    continue;
                const double rate = it->second.median();
                table.add_row({bench::size_name(size), name, bench::thousands(rate),
                               bench::fixed(rate * static_cast<double>(size) / 1e6, 1),
                               it->second.spread(), bench::ratio_text(bus, rate)});
            }
        }
        table.print(stdout);
        std::printf("\n");
    }
    if (!results.rtt_p50_us.empty()) {
        std::printf(
            "2. round trip, %zu B, one message in flight (%d round trips after %d warm-up)\n",
            small_payload, options.round_trips, options.warmup_round_trips);
        bench::Table table({{"peer", bench::Align::left},
                            {"p50 us"},
                            {"p99 us"},
                            {"p50 spread"},
                            {"bus/peer p50"}});
        const auto bus = bench::median_of(results.rtt_p50_us, "bus");
        for (const auto& name : rtt_peers) {
            const auto it = results.rtt_p50_us.find(name);
            if (it == results.rtt_p50_us.end())
                continue;
            const double p50 = it->second.median();
            table.add_row({name, bench::fixed(p50, 1),
                           bench::fixed(*bench::median_of(results.rtt_p99_us, name), 1),
                           it->second.spread(), bench::ratio_text(bus, p50)});
        }
        table.print(stdout);
        std::printf("\n");
    }
    if (!results.fds.empty()) {
        std::printf(
            "3. file descriptors passed, one per %zu B message (the receiver closes each)\n",
            fd_message_payload);
        bench::Table table({{"peer", bench::Align::left}, {"fds/s"}, {"spread"}, {"bus/peer"}});
        const auto bus = bench::median_of(results.fds, "bus");
        for (const auto& name : fd_peers) {
            const auto it = results.fds.find(name);
            if (it == results.fds.end())
                continue;
            const double rate = it->second.median();
            table.add_row(
                {name, bench::thousands(rate), it->second.spread(), bench::ratio_text(bus, rate)});
        }
        table.print(stdout);
        std::printf("\n");
    }

    // A bar prints only when both of its measurements ran (--only may have skipped one).
    const auto& tput = results.throughput;
    bench::print_ratio_bar(stdout, "channel.64B.vs_node", bench::median_of(tput, "64B.bus"),
                           bench::median_of(tput, "64B.node"), "20", false);
    bench::print_ratio_bar(stdout, "channel.64B.vs_floor", bench::median_of(tput, "64B.bus"),
                           bench::median_of(tput, "64B.floor"), "0.70", false);
    bench::print_ratio_bar(stdout, "channel.4KiB.vs_raw", bench::median_of(tput, "4KiB.bus"),
                           bench::median_of(tput, "4KiB.raw"), "0.50", false);
    bench::print_ratio_bar(stdout, "channel.rtt_p50.vs_raw",
                           bench::median_of(results.rtt_p50_us, "bus"),
                           bench::median_of(results.rtt_p50_us, "raw"), "1.3", true);
    bench::print_ratio_bar(stdout, "channel.fds.vs_raw", bench::median_of(results.fds, "bus"),
                           bench::median_of(results.fds, "raw"), "0.50", false);
}

// --- main -----------------------------------------------------------------------------------

Options parse_options(int argc, char** argv) {
    Options options;
    bench::OptionParser parser("channel-bench", options);
    parser.add("--round-trips", "N", [&](std::string_view v) {
        options.round_trips = static_cast<int>(bench::to_integer(v, 1));
    });
    parser.add("--node", "PATH", [&](std::string_view v) { options.node = v; });
    parser.add("--node-script", "PATH", [&](std::string_view v) { options.node_script = v; });
    parser.parse(argc, argv);
    options.warmup_round_trips = std::max(1, options.round_trips / 10);
    return options;
}

struct Case {
    std::string name;
    // Records its result and returns it as text, for the progress lines on stderr.
    std::function<std::string()> measure;
    // Drops what earlier rounds recorded, once the case has broken: no table row or bar comes
    // from a case that does not work every time.
    std::function<void()> discard;
};

std::vector<Case> all_cases(const Options& options, Results& results) {
    std::vector<Case> cases;
    auto add_rate = [&](const std::string& name, std::map<std::string, bench::Samples>& samples,
                        const std::string& key, const char* unit, std::function<Rate()> measure) {
        cases.push_back({name,
                         [&samples, key, unit, measure] {
                             const double rate = measure().per_second();
                             samples[key].values.push_back(rate);
                             return bench::thousands(rate) + " " + unit;
                         },
                         [&samples, key] { samples.erase(key); }});
    };
    for (const std::size_t size : {small_payload, large_payload}) {
        const std::string sized = bench::size_name(size);
        const double seconds = options.seconds;
        auto add = [&](const std::string& peer, std::function<Rate()> measure) {
            add_rate("throughput." + peer + "." + sized, results.throughput, sized + "." + peer,
                     "msgs/s", std::move(measure));
        };
        add("bus", [=] { return throughput_bus(size, seconds); });
        add("raw", [=] { return throughput_raw(size, seconds); });
        add("floor", [=] { return throughput_floor(size, seconds); });
        add("node", [=, &options] { return throughput_node(options, size); });
    }
    auto add_rtt = [&](const std::string& peer, std::function<Latency()> measure) {
        cases.push_back({"rtt." + peer,
                         [&results, peer, measure] {
                             const Latency latency = measure();
                             results.rtt_p50_us[peer].values.push_back(latency.p50_us);
                             results.rtt_p99_us[peer].values.push_back(latency.p99_us);
                             return "p50 " + bench::fixed(latency.p50_us, 1) + " us, p99 " +
                                    bench::fixed(latency.p99_us, 1) + " us";
                         },
                         [&results, peer] {
                             results.rtt_p50_us.erase(peer);
                             results.rtt_p99_us.erase(peer);
                         }});
    };
    add_rtt("bus", [&options] { return rtt_bus(options); });
    add_rtt("raw", [&options] { return rtt_raw(options); });
    add_rtt("node", [&options] { return rtt_node(options); });
    auto add_fds = [&](const std::string& peer, std::function<Rate()> measure) {
        add_rate("fds." + peer, results.fds, peer, "fds/s", std::move(measure));
    };
    add_fds("bus", [&options] { return fds_bus(options.seconds); });
    add_fds("raw", [&options] { return fds_raw(options.seconds); });
    add_fds("node", [&options] { return fds_node(options); });
    return cases;
}

} // namespace

int main(int argc, char** argv) {
    const Options options = parse_options(argc, argv);
    bench::watchdog::install("channel-bench");

    Results results;
    std::vector<Case> cases;
    for (auto& c : all_cases(options, results)) {
        if (options.selected(c.name))
            cases.push_back(std::move(c));
    }
    if (cases.empty()) {
        std::fprintf(stderr, "channel-bench: --only matches no case\n");
        return 2;
    }

    // Rounds go through every case in turn, so a burst of load on the shared machine hits one
    // round of each peer rather than every round of one.
    // A broken case is reported and left out of later rounds; the others still run, so one
    // failure does not hide every other figure.
    std::map<std::string, std::string> broken;
    for (int round = 1; round <= options.rounds; ++round) {
        for (const auto& c : cases) {
            if (broken.contains(c.name))
                continue;
            bench::watchdog::arm_case(c.name, options.seconds);
            try {
                const std::string result = c.measure();
                std::fprintf(stderr, "channel-bench: round %d/%d: %-22s %s\n", round,
                             options.rounds, c.name.c_str(), result.c_str());
            } catch (const std::exception& e) {
                std::fprintf(stderr, "channel-bench: round %d/%d: %s broke: %s\n", round,
                             options.rounds, c.name.c_str(), e.what());
                broken[c.name] = e.what();
                c.discard();
            }
            bench::watchdog::disarm();
        }
    }
    print_report(options, results);
    for (const auto& [name, error] : broken)
        std::printf("broken: %s: %s\n", name.c_str(), error.c_str());
    return broken.empty() ? 0 : 1;
}
