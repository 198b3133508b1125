// What the `bus` commands share: global options, connecting with an error that says what was
// tried, exit codes, output styling (colours and aligned tables only on a terminal), and the
// type catalogue that decodes payloads the binary was never compiled with.
#pragma once

#include <utility> // before Asio (Boost 1.74 misses it: DESIGN.md)

#include <bus/client.hpp>

#include <CLI/CLI.hpp>
#include <google/protobuf/compiler/importer.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/dynamic_message.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

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

// Each command group adds its subcommands; the one the user picked sets `run`.
using Runner = std::function<int()>;
void add_sub(CLI::App& app, Global& g, Runner& run);
void add_pub(CLI::App& app, Global& g, Runner& run);
void add_req(CLI::App& app, Global& g, Runner& run); // req and serve
void add_ls(CLI::App& app, Global& g, Runner& run);  // ls, status, types
void add_monitor(CLI::App& app, Global& g, Runner& run);
void add_top(CLI::App& app, Global& g, Runner& run);
void add_bench(CLI::App& app, Global& g, Runner& run);
void add_shm(CLI::App& app, Global& g, Runner& run); // shm ls, shm rm (no broker)
void add_cluster(CLI::App& app, Global& g, Runner& run);

// A connected, welcomed client, or Failure(unavailable) naming the endpoint and what to do.
std::shared_ptr<Client> connect(boost::asio::io_context& io, const Global& g,
                                const std::string& name);

// Exit code and text for an error a request or the broker reported.
int exit_code_for(std::error_code ec);
std::string explain(std::error_code ec, const std::string& what, const Global& g);

// "250ms", "2s", "1.5m", "1h"; a bare number is seconds. Throws Failure(usage).
std::chrono::milliseconds parse_duration(const std::string& text, const std::string& option);

// Runs `io` until `done` or until SIGINT/SIGTERM; true when `done`.
bool run_until_done(boost::asio::io_context& io, const std::function<bool()>& done);
// The end of a receiving command (sub, monitor): runs `io` until `done` or until `timeout`
// passes, then closes `client`. Throws `failed` if a handler set it, else Failure(timeout) when
// `count` messages were asked for and fewer were shown in time (`timeout_text`: the flag).
void receive_until(boost::asio::io_context& io, Client& client,
                   std::optional<std::chrono::milliseconds> timeout, bool& done,
                   const std::optional<Failure>& failed, const std::uint64_t& shown,
                   std::uint64_t count, const std::string& timeout_text);
// True once SIGINT/SIGTERM arrived (Ctrl-C ends commands cleanly).
bool interrupted();
// Watches SIGINT/SIGTERM on `io` for as long as the returned handle lives (keep it beside
// `io`, declared after it, so it goes first).
[[nodiscard]] std::shared_ptr<void> watch_signals(boost::asio::io_context& io);

// --- output ------------------------------------------------------------------------------------

struct Style {
    bool on = false;
    std::string wrap(std::string_view text, const char* code) const;
    std::string bold(std::string_view t) const { return wrap(t, "1"); }
    std::string dim(std::string_view t) const { return wrap(t, "2"); }
    std::string cyan(std::string_view t) const { return wrap(t, "36"); }
    std::string yellow(std::string_view t) const { return wrap(t, "33"); }
    std::string green(std::string_view t) const { return wrap(t, "32"); }
    std::string red(std::string_view t) const { return wrap(t, "31"); }
};

// Columns aligned (and a bold header) on a terminal; tab-separated when piped.
class Table {
public:
    explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
    void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
    void print(std::FILE* out, const Style& style) const;

private:
    std::vector<std::string> header_;
    std::vector<std::vector<std::string>> rows_;
};

std::string hex(std::string_view bytes);
std::string base64(std::string_view bytes);
bool printable_utf8(std::string_view bytes);
std::string local_time(std::chrono::system_clock::time_point t); // HH:MM:SS.mmm
std::string iso_time(std::chrono::system_clock::time_point t);   // UTC, RFC 3339, µs
std::string type_name_of(std::string_view type_url);             // the url without its prefix

// protobuf's JSON mapping of `m`, compact; field names as in the .proto.
std::string to_json(const google::protobuf::Message& m);
// Decodes protobuf's JSON mapping into `m`; Failure(usage) naming the type on bad input.
void from_json(const std::string& text, google::protobuf::Message& m);

// --- types -------------------------------------------------------------------------------------

// Where `bus` finds a type: files the user gave (--proto, --descriptor-set), the types it was
// built with, and busd's registry ($sys.type), asked once per name.
class Types {
public:
    Types();
    ~Types();
    // --proto FILE with -I DIRs (default: the file's directory). Failure(usage) on errors.
    void load_proto(const std::string& file, std::vector<std::string> import_dirs);
    void load_descriptor_set(const std::string& file);

    // Known without asking busd; null if not.
    const google::protobuf::Descriptor* find_local(const std::string& name) const;
    // Whether the registry was asked about `name` (answered or not).
    bool fetched(const std::string& name) const { return fetched_.count(name) != 0; }
    // Local, else what the registry answered; null while unknown. `error` says why.
    const google::protobuf::Descriptor* find(const std::string& name,
                                             std::string* error = nullptr) const;

    // Asks busd for `name` (once; later callers wait for the same answer), then calls `done`.
    void fetch(Client& client, const std::string& name, std::function<void()> done);
    // Blocking: local or registry; Failure(usage) if neither knows it.
    const google::protobuf::Descriptor* resolve(boost::asio::io_context& io, Client& client,
                                                const std::string& name);

    std::unique_ptr<google::protobuf::Message> make(const google::protobuf::Descriptor* d) const;

private:
    struct Pool {
        std::unique_ptr<google::protobuf::DescriptorPool> pool;
        std::unique_ptr<google::protobuf::DynamicMessageFactory> factory;
    };
    struct Fetched {
        const google::protobuf::Descriptor* type = nullptr;
        std::string error;
    };
    const google::protobuf::DescriptorPool* importer_pool() const;

    // --proto: the importer owns its pool.
    std::unique_ptr<google::protobuf::compiler::DiskSourceTree> source_tree_;
    std::unique_ptr<google::protobuf::compiler::MultiFileErrorCollector> errors_;
    std::unique_ptr<google::protobuf::compiler::Importer> importer_;
    std::unique_ptr<google::protobuf::DynamicMessageFactory> importer_factory_;
    std::vector<std::unique_ptr<Pool>> pools_; // --descriptor-set, then one per fetched type
    std::map<std::string, Fetched> fetched_;
    std::map<std::string, std::vector<std::function<void()>>> waiting_;
};

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

// How a command with a body (pub, req, serve) says what the body is: raw bytes, or JSON of a
// protobuf type found in --proto / --descriptor-set, the binary, or busd's registry.
struct BodyOptions {
    std::string type;
    std::string proto;
    std::vector<std::string> import_dirs;
    std::string descriptor_set;
};
void add_body_options(CLI::App& cmd, BodyOptions& o);
// Loads --proto / --descriptor-set into `types`.
void load_body_types(const BodyOptions& o, Types& types);
// The body argument, else stdin when it is not a terminal, else empty.
std::string read_body(const std::optional<std::string>& arg);
// `text` (JSON) as a message of o.type, or null without --type. Failure(usage) on bad input.
std::unique_ptr<google::protobuf::Message> encode_body(const BodyOptions& o, Types& types,
                                                       boost::asio::io_context& io, Client& client,
                                                       const std::string& text);

// A payload as JSON for --json output, and as text for people. `decoded` is false when the
// type is unknown or the bytes do not parse as it (then `note` says why).
struct Decoded {
    bool decoded = false;
    std::string json; // protobuf's JSON mapping, when decoded
    std::string note;
};
Decoded decode(const Types& types, std::string_view type_url, std::string_view payload);

// One received message as a line (text, or a JSON object with --json).
struct Shown {
    std::chrono::system_clock::time_point at;
    std::string kind; // for monitor; empty otherwise
    const v1::Envelope* envelope = nullptr;
    bool raw = false;
    bool headers = false;
};
std::string format_message(const Types& types, const Shown& s, const Global& g, const Style& style);

} // namespace bus::cli
