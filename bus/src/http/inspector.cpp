#include "http/inspector.hpp"

#include "bus/channel.hpp"
#include "bus/frame.hpp"
#include "bus/message.hpp"
#include "bus/subject.hpp"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>

#include <sys/socket.h>
#include <unistd.h>

namespace bus::http {
namespace {

using json = nlohmann::json;

// Payloads larger than this are described, not shown: one event must fit a stream's queue.
constexpr std::size_t max_shown_payload = 64 * 1024;
// A type busd's registry did not know is asked for again after this long.
constexpr auto retry_unknown_type = std::chrono::seconds(2);

} // namespace

Inspector::Inspector(boost::asio::io_context& io, broker::Broker& broker)
    : io_(io), broker_(broker) {}

Inspector::~Inspector() {
    if (client_)
        client_->close();
}

std::string Inspector::watch(const std::string& pattern, std::shared_ptr<EventStream> stream) {
    if (!valid_pattern(pattern))
        return "'" + pattern + "' is not a subject pattern (tokens, *, >)";
    if (!client_) {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0)
            return std::string("cannot make the inspector's link: ") + std::strerror(errno);
        UniqueFd ours(sv[0]), theirs(sv[1]);
        auto channel = Channel::adopt(io_, std::move(ours));
        if (!channel)
            return "cannot make the inspector's link: " + channel.error().message();
        broker_.adopt(std::move(theirs), ::getpid());
        ClientOptions options;
        options.name = "busd-http-inspector"; // a label: no spaces (Hello)
        auto client = Client::adopt(io_, std::move(channel).value(), options);
        if (!client)
            return "cannot start the inspector: " + client.error().message();
        client_ = std::move(client).value();
    }
    std::weak_ptr<EventStream> weak = stream;
    const auto sid = client_->subscribe(pattern, [this, weak](Message& m) {
        if (auto s = weak.lock())
            s->send(describe(m));
    });
    stream->on_close([sid, client = std::weak_ptr<Client>(client_)] {
        if (auto c = client.lock())
            c->unsubscribe(sid);
    });
    // Once busd has the subscription, the reader is told: what is published from then on
    // reaches it.
    client_->flush([weak, pattern](std::error_code ec) {
        if (auto s = weak.lock(); s && !ec)
            s->send(
                json{{"subscribed", pattern}}.dump(-1, ' ', false, json::error_handler_t::replace));
    });
    return {};
}

const google::protobuf::Descriptor* Inspector::find_type(const std::string& name,
                                                         std::string& why) {
    if (auto* d = google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(name))
        return d;
    const auto now = std::chrono::steady_clock::now();
    auto it = types_.find(name);
    if (it == types_.end() || (!it->second.type && now - it->second.asked > retry_unknown_type)) {
        Known known;
        known.asked = now;
        auto answer = broker_.query("$sys.type", name, ::getuid());
        if (!answer.reply) {
            known.why = "type " + name + " is not registered with busd";
        } else if (auto set = DescriptorSet::build(answer.reply->SerializeAsString(), &known.why)) {
            known.type = set.value()->find(name);
            known.set = std::move(set).value();
            if (!known.type)
                known.why = "busd's descriptor of " + name + " does not define it";
        }
        it = types_.insert_or_assign(name, std::move(known)).first;
    }
    why = it->second.why;
    return it->second.type;
}

std::string Inspector::describe(const Message& m) {
    json out;
    out["subject"] = std::string(m.subject());
    out["source"] = std::string(m.source());
    out["kind"] = kind_name(m.kind());
    out["size"] = m.payload().size();
    json headers = json::object();
    for (const auto& h : m.envelope().headers())
        headers[h.key()] = h.value();
    out["headers"] = std::move(headers);
    out["payload"] = nullptr;

    const std::string_view url = m.type_url();
    std::string name(
        url.starts_with(frame::type_url_prefix) ? url.substr(frame::type_url_prefix.size()) : url);
    out["type"] = name;
    std::string why;
    if (m.payload().size() > max_shown_payload) {
        why = "too large to show (" + std::to_string(m.payload().size()) + " bytes)";
    } else if (m.is_json()) {
        auto parsed = json::parse(m.payload(), nullptr, false);
        if (parsed.is_discarded())
            why = "the payload is not the JSON its type says";
        else
            out["payload"] = std::move(parsed);
    } else if (name.empty()) {
        why = "no type: raw bytes";
    } else if (const auto* type = find_type(name, why)) {
        std::unique_ptr<google::protobuf::Message> decoded;
        if (type->file()->pool() == google::protobuf::DescriptorPool::generated_pool())
            decoded.reset(
                google::protobuf::MessageFactory::generated_factory()->GetPrototype(type)->New());
        else
            decoded = types_.find(name)->second.set->make(type);
        std::string text;
        if (!decoded->ParseFromArray(m.payload().data(), static_cast<int>(m.payload().size())))
            why = "the payload is not a " + name;
        else if (auto as_json = to_json(*decoded); !as_json)
            why = "cannot show it as JSON";
        else
            out["payload"] = json::parse(as_json.value(), nullptr, false);
    }
    if (!why.empty()) {
        out["error"] = why;
        if (m.payload().size() <= max_shown_payload)
            out["payload_base64"] = base64(m.payload());
    }
    return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

} // namespace bus::http
