// The CLI tests' "real publisher": the only program built with testonly.v1.Reading.
//
//   cli_test_publisher ENDPOINT pub SUBJECT COUNT   publish COUNT readings (seq 1..COUNT)
//   cli_test_publisher ENDPOINT serve SERVICE       answer each request with a reading
//                                                   whose sensor is the request's bytes
//   cli_test_publisher ENDPOINT mute SERVICE        serve SERVICE and never answer
//   cli_test_publisher ENDPOINT die SERVICE         serve SERVICE and exit on a request
//   cli_test_publisher ENDPOINT register            only register the type with busd
#include <bus/client.hpp>

#include "testonly/v1/sensor.pb.h"

#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

testonly::v1::Reading reading(std::uint32_t seq, const std::string& sensor) {
    testonly::v1::Reading r;
    r.set_sensor(sensor);
    r.set_celsius(20.5 + seq);
    r.set_seq(seq);
    r.mutable_place()->set_room("lab");
    r.mutable_place()->set_floor(-1);
    r.add_tags("test");
    r.add_tags("only");
    r.mutable_taken()->set_seconds(1'700'000'000);
    return r;
}

} // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: cli_test_publisher ENDPOINT pub SUBJECT COUNT | serve "
                             "SERVICE | register\n");
        return 2;
    }
    const std::string endpoint = argv[1], mode = argv[2];
    boost::asio::io_context io;
    bus::ClientOptions options;
    options.name = "cli-test-publisher";
    auto client = bus::Client::connect(io, endpoint, options);
    if (!client) {
        std::fprintf(stderr, "cli_test_publisher: %s\n", client.error().message().c_str());
        return 1;
    }
    auto& c = client.value();
    if (mode == "pub" && argc == 5) {
        const int count = std::stoi(argv[4]);
        for (int i = 1; i <= count; ++i)
            c->publish(argv[3], reading(static_cast<std::uint32_t>(i), "thermo-1"));
    } else if (mode == "register") {
        // Publishing where nobody listens registers the type all the same.
        c->publish("cli.test.register", reading(0, "none"));
    } else if ((mode == "serve" || mode == "mute" || mode == "die") && argc == 4) {
        c->serve(argv[3], [mode](bus::Message& m, bus::Responder& r) {
            if (mode == "die")
                std::_Exit(0);
            if (mode == "serve")
                r.reply(reading(7, std::string(m.payload())));
        });
        if (auto ec = c->flush_wait()) {
            std::fprintf(stderr, "cli_test_publisher: %s\n", ec.message().c_str());
            return 1;
        }
        io.run(); // until killed
        return 0;
    } else {
        std::fprintf(stderr, "cli_test_publisher: bad arguments\n");
        return 2;
    }
    if (auto ec = c->flush_wait()) {
        std::fprintf(stderr, "cli_test_publisher: broker did not confirm: %s\n",
                     ec.message().c_str());
        return 1;
    }
    return 0;
}
