// bus monitor [PATTERN]: everything busd routes (publishes, requests, replies, errors, direct
// messages, $sys events), decoded like `bus sub` shows messages.
#include "body.hpp"
#include "commands.hpp"
#include "connect.hpp"
#include "loop.hpp"
#include "output.hpp"
#include "receive.hpp"
#include "types.hpp"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/wire_format_lite.h>

#include <cerrno>
#include <cstring>

namespace bus::cli {
namespace {

struct MonitorOptions {
    std::string pattern = ">";
    bool raw = false;
    bool headers = false;
    std::uint64_t count = 0;
    std::string timeout;
    std::string pcap;
};

// --pcap: a classic pcap file of link type LINKTYPE_USER0 (147), one packet per message: the
// bus.v1.Envelope as it was routed (its kind, not the monitor's), payload included and written
// last. Packets over 256 KiB are cut there (orig_len keeps the size), as Wireshark reads no
// larger ones; clients/bus/wireshark/bus.lua dissects them.
class PcapWriter {
public:
    static constexpr std::uint32_t link_type_user0 = 147;
    static constexpr std::uint32_t snap_length = 262144;

    explicit PcapWriter(const std::string& path) : out_(std::fopen(path.c_str(), "wb")) {
        if (!out_)
            throw Failure(exit_code::usage,
                          "--pcap: cannot write " + path + ": " + std::strerror(errno));
        put32(0xa1b2c3d4); // microsecond timestamps, this host's byte order
        put16(2);
        put16(4);
        put32(0); // thiszone
        put32(0); // sigfigs
        put32(snap_length);
        put32(link_type_user0);
        std::fflush(out_);
    }
    ~PcapWriter() { std::fclose(out_); }
    PcapWriter(const PcapWriter&) = delete;
    PcapWriter& operator=(const PcapWriter&) = delete;

    // `message` is changed during the call and given back as it was.
    void write(std::chrono::system_clock::time_point at, v1::Envelope& message) {
        // Everything but the payload, without copying the payload.
        std::string payload;
        payload.swap(*message.mutable_payload());
        v1::Envelope e = message;
        payload.swap(*message.mutable_payload());
        e.set_kind(e.monitored_kind());
        e.clear_monitored_kind();
        e.clear_subscription_id();
        // The payload goes last (any field order parses), so a packet cut at the snap length
        // loses only payload bytes, never the source or headers before it.
        std::string head = e.SerializeAsString();
        if (!message.payload().empty()) {
            google::protobuf::io::StringOutputStream raw(&head);
            google::protobuf::io::CodedOutputStream coded(&raw);
            coded.WriteTag(google::protobuf::internal::WireFormatLite::MakeTag(
                v1::Envelope::kPayloadFieldNumber,
                google::protobuf::internal::WireFormatLite::WIRETYPE_LENGTH_DELIMITED));
            coded.WriteVarint32(static_cast<std::uint32_t>(message.payload().size()));
        }
        const std::size_t size = head.size() + message.payload().size();
        const auto us =
            std::chrono::duration_cast<std::chrono::microseconds>(at.time_since_epoch()).count();
        const auto kept = std::min<std::size_t>(size, snap_length);
        put32(static_cast<std::uint32_t>(us / 1'000'000));
        put32(static_cast<std::uint32_t>(us % 1'000'000));
        put32(static_cast<std::uint32_t>(kept));
        put32(static_cast<std::uint32_t>(size));
        std::fwrite(head.data(), 1, std::min(head.size(), kept), out_);
        if (kept > head.size())
            std::fwrite(message.payload().data(), 1, kept - head.size(), out_);
        std::fflush(out_);
    }

private:
    void put32(std::uint32_t v) { std::fwrite(&v, sizeof v, 1, out_); }
    void put16(std::uint16_t v) { std::fwrite(&v, sizeof v, 1, out_); }
    std::FILE* out_;
};

int run_monitor(const MonitorOptions& o, const Global& g) {
    check_pattern(o.pattern);
    std::optional<std::chrono::milliseconds> timeout;
    if (!o.timeout.empty())
        timeout = parse_duration(o.timeout, "--timeout");

    std::unique_ptr<PcapWriter> pcap;
    if (!o.pcap.empty())
        pcap = std::make_unique<PcapWriter>(o.pcap);

    boost::asio::io_context io;
    const auto signals = watch_signals(io);
    auto client = connect(io, g, "monitor");
    Types types;
    const Style style{g.color()};

    std::optional<Failure> failed;
    ArrivalQueue queue(types, *client, o.raw, o.count, [&](auto at, v1::Envelope& e) {
        if (pcap)
            pcap->write(at, e);
        return format_message(types, Shown{at, kind_name(e.monitored_kind()), &e, o.raw, o.headers},
                              g, style);
    });
    report_events(*client, g, queue, failed,
                  "the broker at " + g.endpoint + " refused to be monitored", "copies");
    client->monitor(o.pattern, [&](Message& m) { queue.push(m.envelope()); });

    receive_until(io, *client, timeout, queue.done(), failed, queue.shown(), o.count, o.timeout);
    return exit_code::ok;
}

} // namespace

void add_monitor(CLI::App& app, Global& g, Runner& run) {
    auto o = std::make_shared<MonitorOptions>();
    auto* cmd = app.add_subcommand(
        "monitor", "Everything busd routes: publishes, requests, replies, direct messages, events");
    cmd->add_option("pattern", o->pattern,
                    "only messages whose subject matches (default `>`: all); replies and errors "
                    "are always shown");
    cmd->add_flag("--raw", o->raw, "do not decode: the payload as hex (base64 with --json)");
    cmd->add_flag("--headers", o->headers, "show the messages' headers");
    cmd->add_option("-n,--count", o->count, "exit after N messages");
    cmd->add_option("-t,--timeout", o->timeout, "exit after this long (500ms, 2s, 1m)");
    cmd->add_option("--pcap", o->pcap,
                    "also write the messages to a pcap file (link type USER0: each packet is "
                    "one bus.v1.Envelope with its payload)");
    cmd->footer("\nLike `bus sub`, with the kind of each message (publish, request, reply, "
                "error, direct,\nevent; \"kind\" with --json). Allowed to busd's own uid and "
                "the uids in its config's\n[access] monitor_uids; others exit with 8.\n\n"
                "Examples:\n"
                "  bus monitor\n"
                "  bus monitor --json 'orders.>' | jq 'select(.kind == \"request\")'");
    cmd->callback([o, &g, &run] { run = [o, &g] { return run_monitor(*o, g); }; });
}

} // namespace bus::cli
