// bus-publisher: publishes typed messages (bus.v1.Heartbeat, numbered) through busd.
//
//   bus-publisher SUBJECT [COUNT]     # BUS_ENDPOINT picks the broker; default: the user's busd
#include <bus/client.hpp>
#include <bus/v1/cluster.pb.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: bus-publisher SUBJECT [COUNT]\n");
        return 2;
    }
    const std::string subject = argv[1];
    const int count = argc > 2 ? std::stoi(argv[2]) : 5;
    boost::asio::io_context io;
    bus::ClientOptions options;
    options.name = "bus-publisher";
    auto client = bus::Client::connect(io, {}, options);
    if (!client) {
        std::fprintf(stderr, "bus-publisher: cannot connect: %s\n",
                     client.error().message().c_str());
        return 1;
    }
    auto& c = client.value();
    for (int i = 1; i <= count; ++i) {
        bus::v1::Heartbeat beat;
        beat.set_seq(static_cast<std::uint64_t>(i));
        c->publish(subject, beat);
    }
    // Done once the broker has routed them all.
    int status = 1;
    c->flush([&](std::error_code ec) {
        if (ec)
            std::fprintf(stderr, "bus-publisher: broker did not confirm: %s\n",
                         ec.message().c_str());
        else
            std::printf("published %d messages on %s\n", count, subject.c_str());
        status = ec ? 1 : 0;
        c->close();
    });
    io.run();
    return status;
}
