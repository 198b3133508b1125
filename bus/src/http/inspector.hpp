// `/api/v1/inspect?subject=PATTERN`: `{"subscribed": PATTERN}` once busd has the subscription,
// then the messages busd routes on the pattern, each as one JSON event, decoded through busd's type
// registry (or bus's own types) when it can be. It is a bus client of busd's own, over a socketpair
// the broker adopts, made when the first stream opens: a subscription per stream, gone with the
// stream; a reader that falls behind loses events (the server counts them), never holding busd's
// memory.
#pragma once

#include "http/server.hpp"

#include "bus/broker.hpp"
#include "bus/client.hpp"
#include "bus/descriptor_set.hpp"

#include <map>
#include <memory>
#include <string>

namespace bus::http {

class Inspector {
public:
    Inspector(boost::asio::io_context& io, broker::Broker& broker);
    ~Inspector();

    // Streams what matches `pattern` to `stream` until it closes. Empty on success, else why
    // not (an invalid pattern), for a 400.
    std::string watch(const std::string& pattern, std::shared_ptr<EventStream> stream);

    // One message as the inspector shows it (a JSON object, one line).
    std::string describe(const Message& m);

private:
    const google::protobuf::Descriptor* find_type(const std::string& name, std::string& why);

    boost::asio::io_context& io_;
    broker::Broker& broker_;
    std::shared_ptr<Client> client_;
    // Types from busd's registry, each asked for once (a name it does not know: null, retried
    // after a while, as it may be registered later).
    struct Known {
        std::unique_ptr<DescriptorSet> set;
        const google::protobuf::Descriptor* type = nullptr;
        std::string why;
        std::chrono::steady_clock::time_point asked;
    };
    std::map<std::string, Known, std::less<>> types_;
};

} // namespace bus::http
