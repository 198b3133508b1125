#include "common.hpp"

#include <bus/endpoint.hpp>
#include <bus/frame.hpp>
#include <bus/v1/broker.pb.h>
#include <bus/v1/cluster.pb.h>

#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/util/json_util.h>

#include <cmath>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <unistd.h>

namespace bus::cli {

namespace pb = google::protobuf;

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

// --- connecting --------------------------------------------------------------------------------

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

namespace {
bool g_interrupted = false;
} // namespace

std::shared_ptr<void> watch_signals(boost::asio::io_context& io) {
    auto signals = std::make_shared<boost::asio::signal_set>(io, SIGINT, SIGTERM);
    signals->async_wait([&io](const boost::system::error_code& ec, int) {
        if (ec)
            return;
        g_interrupted = true;
        io.stop();
    });
    return signals;
}

bool interrupted() {
    return g_interrupted;
}

bool run_until_done(boost::asio::io_context& io, const std::function<bool()>& done) {
    while (!done() && !g_interrupted) {
        if (io.stopped())
            io.restart();
        io.run_one();
    }
    return done();
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

// --- output ------------------------------------------------------------------------------------

std::string Style::wrap(std::string_view text, const char* code) const {
    if (!on)
        return std::string(text);
    return std::string("\x1b[") + code + "m" + std::string(text) + "\x1b[0m";
}

void Table::print(std::FILE* out, const Style& style) const {
    if (!style.on) {
        auto line = [&](const std::vector<std::string>& cells) {
            for (std::size_t i = 0; i < cells.size(); ++i)
                std::fprintf(out, "%s%s", i ? "\t" : "", cells[i].c_str());
            std::fputc('\n', out);
        };
        line(header_);
        for (const auto& r : rows_)
            line(r);
        return;
    }
    std::vector<std::size_t> width(header_.size());
    for (std::size_t i = 0; i < header_.size(); ++i)
        width[i] = header_[i].size();
    for (const auto& r : rows_)
        for (std::size_t i = 0; i < r.size() && i < width.size(); ++i)
            width[i] = std::max(width[i], r[i].size());
    auto line = [&](const std::vector<std::string>& cells, bool head) {
        std::string text;
        for (std::size_t i = 0; i < cells.size(); ++i) {
            std::string cell = cells[i];
            if (i + 1 < cells.size())
                cell.resize(std::max(cell.size(), width[i]), ' ');
            text += (i ? "  " : "") + cell;
        }
        std::fprintf(out, "%s\n", head ? style.bold(text).c_str() : text.c_str());
    };
    line(header_, true);
    for (const auto& r : rows_)
        line(r, false);
}

std::string hex(std::string_view bytes) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char c : bytes) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

std::string base64(std::string_view bytes) {
    static const char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    std::size_t i = 0;
    for (; i + 2 < bytes.size(); i += 3) {
        const unsigned v = (static_cast<unsigned char>(bytes[i]) << 16) |
                           (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                           static_cast<unsigned char>(bytes[i + 2]);
        out += table[v >> 18];
        out += table[(v >> 12) & 63];
        out += table[(v >> 6) & 63];
        out += table[v & 63];
    }
    if (i + 1 == bytes.size()) {
        const unsigned v = static_cast<unsigned char>(bytes[i]) << 16;
        out += table[v >> 18];
        out += table[(v >> 12) & 63];
        out += "==";
    } else if (i + 2 == bytes.size()) {
        const unsigned v = (static_cast<unsigned char>(bytes[i]) << 16) |
                           (static_cast<unsigned char>(bytes[i + 1]) << 8);
        out += table[v >> 18];
        out += table[(v >> 12) & 63];
        out += table[(v >> 6) & 63];
        out += '=';
    }
    return out;
}

bool printable_utf8(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        std::size_t n = 0;
        if (c < 0x80) {
            if ((c < 0x20 && c != '\n' && c != '\t' && c != '\r') || c == 0x7f)
                return false;
            ++i;
            continue;
        }
        if ((c & 0xe0) == 0xc0 && c >= 0xc2)
            n = 1;
        else if ((c & 0xf0) == 0xe0)
            n = 2;
        else if ((c & 0xf8) == 0xf0 && c <= 0xf4)
            n = 3;
        else
            return false;
        for (std::size_t k = 1; k <= n; ++k)
            if (i + k >= s.size() || (static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80)
                return false;
        i += n + 1;
    }
    return true;
}

std::string local_time(std::chrono::system_clock::time_point t) {
    const auto secs = std::chrono::system_clock::to_time_t(t);
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count() % 1000;
    std::tm tm{};
    ::localtime_r(&secs, &tm);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%02d:%02d:%02d.%03d", tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<int>(ms));
    return buf;
}

std::string iso_time(std::chrono::system_clock::time_point t) {
    const auto secs = std::chrono::system_clock::to_time_t(t);
    const auto us =
        std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count() %
        1'000'000;
    std::tm tm{};
    ::gmtime_r(&secs, &tm);
    char buf[48];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<int>(us));
    return buf;
}

std::string type_name_of(std::string_view type_url) {
    if (type_url.starts_with(frame::type_url_prefix))
        type_url.remove_prefix(frame::type_url_prefix.size());
    return std::string(type_url);
}

std::string to_json(const pb::Message& m) {
    std::string out;
    pb::util::JsonPrintOptions options;
    options.preserve_proto_field_names = true;
    // Every field, zero or not: an inspector shows what is there, and jq filters need not
    // guess at missing keys.
    options.always_print_primitive_fields = true;
    if (auto status = pb::util::MessageToJsonString(m, &out, options); !status.ok())
        return {};
    return out;
}

void from_json(const std::string& text, pb::Message& m) {
    pb::util::JsonParseOptions options;
    if (auto status = pb::util::JsonStringToMessage(text, &m, options); !status.ok())
        throw Failure(exit_code::usage, "the body is not JSON for " +
                                            m.GetDescriptor()->full_name() + ": " +
                                            std::string(status.message()));
}

// --- types -------------------------------------------------------------------------------------

namespace {

class CollectErrors : public pb::compiler::MultiFileErrorCollector {
public:
    void AddError(const std::string& file, int line, int column,
                  const std::string& message) override {
        text += file + ":" + std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " +
                message + "\n";
    }
    std::string text;
};

std::string read_file(const std::string& path, const std::string& what) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw Failure(exit_code::usage, "cannot read " + what + " " + path);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

} // namespace

Types::Types() {
    // bus's own types are always known: naming them links their descriptors into the binary
    // (a static library would otherwise leave the unreferenced ones out).
    (void)v1::Envelope::descriptor();
    (void)v1::BrokerStats::descriptor();
    (void)v1::Heartbeat::descriptor();
}
Types::~Types() = default;

void Types::load_proto(const std::string& file, std::vector<std::string> import_dirs) {
    namespace fs = std::filesystem;
    if (!fs::exists(file))
        throw Failure(exit_code::usage, "--proto: " + file + " does not exist");
    if (import_dirs.empty())
        import_dirs.push_back(fs::path(file).parent_path().empty()
                                  ? std::string(".")
                                  : fs::path(file).parent_path().string());
    source_tree_ = std::make_unique<pb::compiler::DiskSourceTree>();
    for (const auto& dir : import_dirs)
        source_tree_->MapPath("", dir);
    // Where Debian keeps google/protobuf/*.proto, for files that import the well-known types.
    if (fs::exists("/usr/include/google/protobuf/timestamp.proto"))
        source_tree_->MapPath("", "/usr/include");
    // The file's name as its imports would spell it: its path under an -I directory.
    std::string relative;
    for (const auto& dir : import_dirs) {
        const auto rel = fs::absolute(file).lexically_normal().lexically_relative(
            fs::absolute(dir).lexically_normal());
        if (!rel.empty() && *rel.begin() != "..") {
            relative = rel.string();
            break;
        }
    }
    if (relative.empty())
        throw Failure(exit_code::usage,
                      "--proto: " + file + " is not under any -I directory given");
    auto errors = std::make_unique<CollectErrors>();
    auto* collected = errors.get();
    errors_ = std::move(errors);
    importer_ = std::make_unique<pb::compiler::Importer>(source_tree_.get(), errors_.get());
    if (!importer_->Import(relative))
        throw Failure(exit_code::usage,
                      "--proto: " + file + " does not compile:\n" + collected->text);
    importer_factory_ = std::make_unique<pb::DynamicMessageFactory>(importer_->pool());
}

void Types::load_descriptor_set(const std::string& file) {
    pb::FileDescriptorSet set;
    const std::string bytes = read_file(file, "--descriptor-set");
    if (!set.ParseFromString(bytes))
        throw Failure(exit_code::usage, "--descriptor-set: " + file +
                                            " is not a FileDescriptorSet (make one with protoc "
                                            "--include_imports --descriptor_set_out=FILE)");
    auto pool = std::make_unique<Pool>();
    pool->pool = std::make_unique<pb::DescriptorPool>();
    for (const auto& f : set.file())
        if (!pool->pool->BuildFile(f))
            throw Failure(exit_code::usage, "--descriptor-set: " + file + ": " + f.name() +
                                                " does not build (are its imports in the set? "
                                                "use protoc --include_imports)");
    pool->factory = std::make_unique<pb::DynamicMessageFactory>(pool->pool.get());
    pools_.insert(pools_.begin(), std::move(pool));
}

const pb::DescriptorPool* Types::importer_pool() const {
    return importer_ ? importer_->pool() : nullptr;
}

const pb::Descriptor* Types::find_local(const std::string& name) const {
    if (auto* p = importer_pool())
        if (auto* d = p->FindMessageTypeByName(name))
            return d;
    for (const auto& p : pools_)
        if (auto* d = p->pool->FindMessageTypeByName(name))
            return d;
    return pb::DescriptorPool::generated_pool()->FindMessageTypeByName(name);
}

const pb::Descriptor* Types::find(const std::string& name, std::string* error) const {
    if (auto* d = find_local(name))
        return d;
    if (auto it = fetched_.find(name); it != fetched_.end()) {
        if (error)
            *error = it->second.error;
        return it->second.type;
    }
    if (error)
        *error = "unknown type " + name;
    return nullptr;
}

void Types::fetch(Client& client, const std::string& name, std::function<void()> done) {
    if (find_local(name) || fetched_.count(name)) {
        done();
        return;
    }
    auto& waiters = waiting_[name];
    waiters.push_back(std::move(done));
    if (waiters.size() > 1)
        return; // asked already
    client.request_bytes(
        "$sys.type", name, std::chrono::seconds(5), [this, name](std::error_code ec, Message& m) {
            Fetched f;
            pb::FileDescriptorSet set;
            if (ec == errc::no_responders) {
                f.error = "type " + name + " is not registered with busd (see `bus ls types`)";
            } else if (ec) {
                f.error = "cannot ask busd for type " + name + ": " + ec.message();
            } else if (!set.ParseFromString(std::string(m.payload()))) {
                f.error = "busd's descriptor of " + name + " does not parse";
            } else {
                auto pool = std::make_unique<Pool>();
                pool->pool = std::make_unique<pb::DescriptorPool>();
                bool ok = true;
                for (const auto& file : set.file())
                    ok = ok && pool->pool->BuildFile(file) != nullptr;
                f.type = ok ? pool->pool->FindMessageTypeByName(name) : nullptr;
                if (f.type) {
                    pool->factory = std::make_unique<pb::DynamicMessageFactory>(pool->pool.get());
                    pools_.push_back(std::move(pool));
                } else {
                    f.error = "busd's descriptor of " + name + " does not build";
                }
            }
            fetched_[name] = std::move(f);
            auto callbacks = std::move(waiting_[name]);
            waiting_.erase(name);
            for (auto& w : callbacks)
                w();
        });
}

const pb::Descriptor* Types::resolve(boost::asio::io_context& io, Client& client,
                                     const std::string& name) {
    bool done = false;
    fetch(client, name, [&] { done = true; });
    run_until_done(io, [&] { return done; });
    std::string error;
    if (auto* d = find(name, &error))
        return d;
    if (!done)
        throw Failure(exit_code::failure, "interrupted");
    throw Failure(exit_code::usage, error);
}

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

std::unique_ptr<pb::Message> Types::make(const pb::Descriptor* d) const {
    const pb::Message* prototype = nullptr;
    if (d->file()->pool() == pb::DescriptorPool::generated_pool())
        prototype = pb::MessageFactory::generated_factory()->GetPrototype(d);
    else if (importer_ && d->file()->pool() == importer_->pool())
        prototype = importer_factory_->GetPrototype(d);
    else
        for (const auto& p : pools_)
            if (d->file()->pool() == p->pool.get())
                prototype = p->factory->GetPrototype(d);
    if (!prototype)
        throw std::logic_error("bus: no factory for " + d->full_name());
    return std::unique_ptr<pb::Message>(prototype->New());
}

void add_body_options(CLI::App& cmd, BodyOptions& o) {
    cmd.add_option("--type", o.type,
                   "the body is JSON of this protobuf type (pkg.Msg), found in --proto / "
                   "--descriptor-set, in bus itself, or in busd's registry");
    cmd.add_option("--proto", o.proto, "a .proto file that defines --type")
        ->check(CLI::ExistingFile);
    cmd.add_option("-I,--proto-path", o.import_dirs,
                   "where --proto's imports are found (repeatable; default: its directory)")
        ->allow_extra_args(false);
    cmd.add_option("--descriptor-set", o.descriptor_set,
                   "a FileDescriptorSet defining --type (protoc --include_imports "
                   "--descriptor_set_out=FILE)")
        ->check(CLI::ExistingFile);
}

void load_body_types(const BodyOptions& o, Types& types) {
    if ((!o.proto.empty() || !o.descriptor_set.empty()) && o.type.empty())
        throw Failure(exit_code::usage, "--proto and --descriptor-set need --type to say which "
                                        "message the body is");
    if (!o.proto.empty())
        types.load_proto(o.proto, o.import_dirs);
    if (!o.descriptor_set.empty())
        types.load_descriptor_set(o.descriptor_set);
}

std::string read_body(const std::optional<std::string>& arg) {
    if (arg)
        return *arg;
    if (::isatty(STDIN_FILENO))
        return {};
    std::ostringstream s;
    s << std::cin.rdbuf();
    return s.str();
}

std::unique_ptr<pb::Message> encode_body(const BodyOptions& o, Types& types,
                                         boost::asio::io_context& io, Client& client,
                                         const std::string& text) {
    if (o.type.empty())
        return nullptr;
    const auto* d = types.resolve(io, client, o.type);
    auto m = types.make(d);
    // An empty body is the type's default value.
    if (!std::all_of(text.begin(), text.end(), [](char c) { return std::isspace(c); }))
        from_json(text, *m);
    return m;
}

Decoded decode(const Types& types, std::string_view type_url, std::string_view payload) {
    Decoded out;
    if (type_url.empty()) {
        out.note = "untyped";
        return out;
    }
    if (type_url == json_type_url) {
        if (nlohmann::json::accept(payload)) {
            out.decoded = true;
            out.json = nlohmann::json::parse(payload).dump();
        } else {
            out.note = "not JSON";
        }
        return out;
    }
    const std::string name = type_name_of(type_url);
    std::string error;
    const auto* d = types.find(name, &error);
    if (!d) {
        out.note = error;
        return out;
    }
    auto m = types.make(d);
    if (!m->ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
        out.note = "payload does not parse as " + name;
        return out;
    }
    out.json = to_json(*m);
    out.decoded = !out.json.empty();
    if (!out.decoded)
        out.note = "cannot print " + name + " as JSON";
    return out;
}

std::string format_message(const Types& types, const Shown& s, const Global& g,
                           const Style& style) {
    const auto& e = *s.envelope;
    const std::string type = type_name_of(e.type_url());
    Decoded d;
    if (!s.raw)
        d = decode(types, e.type_url(), e.payload());
    if (g.json) {
        nlohmann::ordered_json j;
        j["time"] = iso_time(s.at);
        if (!s.kind.empty())
            j["kind"] = s.kind;
        j["subject"] = e.subject();
        j["source"] = e.source();
        j["type"] = type;
        if (d.decoded) {
            j["payload"] = nlohmann::ordered_json::parse(d.json);
        } else {
            j["payload_base64"] = base64(e.payload());
            if (!s.raw && printable_utf8(e.payload()))
                j["payload_text"] = e.payload();
            if (!s.raw && !type.empty())
                j["error"] = d.note;
        }
        if (s.headers || !e.headers().empty()) {
            nlohmann::ordered_json h = nlohmann::ordered_json::object();
            for (const auto& kv : e.headers())
                h[kv.key()] = kv.value();
            j["headers"] = h;
        }
        return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    std::string line = style.dim(local_time(s.at)) + " ";
    if (!s.kind.empty())
        line += style.green(s.kind) + " ";
    line += style.bold(style.cyan(e.subject())) + " " + style.dim("from") + " " + e.source();
    if (!type.empty())
        line += " " + style.yellow(type);
    line += "  ";
    if (d.decoded)
        line += d.json;
    else if (s.raw || !printable_utf8(e.payload()))
        line += "hex:" + hex(e.payload());
    else
        line += nlohmann::json(e.payload()).dump();
    if (!s.raw && !d.decoded && !type.empty())
        line += "  " + style.red("(" + d.note + ")");
    if (s.headers)
        for (const auto& kv : e.headers())
            line += "\n    " + style.dim(kv.key() + ":") + " " + kv.value();
    return line;
}

} // namespace bus::cli
