// bus-subscriber: prints the typed messages published on a pattern (`*` one token, `>` the
// rest), then exits after COUNT of them.
//
//   bus-subscriber PATTERN [COUNT]
#include <bus/client.hpp>
#include <bus/v1/cluster.pb.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: bus-subscriber PATTERN [COUNT]\n");
        return 2;
    }
    const std::string pattern = argv[1];
    const int count = argc > 2 ? std::stoi(argv[2]) : 5;
    boost::asio::io_context io;
    bus::ClientOptions options;
    options.name = "bus-subscriber";
    auto client = bus::Client::connect(io, {}, options);
    if (!client) {
        std::fprintf(stderr, "bus-subscriber: cannot connect: %s\n",
                     client.error().message().c_str());
        return 1;
    }
    auto& c = client.value();
    int got = 0;
    c->subscribe<bus::v1::Heartbeat>(
        pattern, [&](std::error_code ec, const bus::v1::Heartbeat& beat, bus::Message& m) {
            // subject() and source() view the received bytes: valid while the handler runs.
            const std::string subject(m.subject());
            if (ec)
                std::printf("%s: not a Heartbeat (%s)\n", subject.c_str(), ec.message().c_str());
            else
                std::printf("%s: heartbeat seq=%llu from %s\n", subject.c_str(),
                            static_cast<unsigned long long>(beat.seq()),
                            std::string(m.source()).c_str());
            std::fflush(stdout);
            if (++got == count)
                c->close();
        });
    c->on_event([](const bus::ClientEvent& e) {
        if (e.kind == bus::ClientEvent::Kind::slow_consumer)
            std::fprintf(stderr, "bus-subscriber: lost %llu messages (too slow)\n",
                         static_cast<unsigned long long>(e.dropped));
    });
    c->flush([&](std::error_code ec) {
        if (ec) {
            std::fprintf(stderr, "bus-subscriber: no broker: %s\n", ec.message().c_str());
            c->close();
            return;
        }
        std::printf("subscribed to %s\n", pattern.c_str());
        std::fflush(stdout);
    });
    io.run();
    return got == count ? 0 : 1;
}
