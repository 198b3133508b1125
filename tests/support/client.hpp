// The two steps every test with a bus::Client repeats: connect and wait for the broker's
// welcome, and wait until the broker has processed what the client sent.
#pragma once

#include "test_support.hpp"

#include <bus/client.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>

namespace bus::test {

// Connected and welcomed. A short heartbeat by default, so that the tests about a dead broker
// end fast; a test whose busd is busy for longer asks for a longer one.
inline std::shared_ptr<bus::Client>
connect_client(boost::asio::io_context& io, const std::string& endpoint, const std::string& name,
               std::chrono::milliseconds heartbeat = std::chrono::milliseconds(200)) {
    bus::ClientOptions options;
    options.name = name;
    options.heartbeat = heartbeat;
    auto c = bus::Client::connect(io, endpoint, options);
    EXPECT_TRUE(c) << c.error().message();
    if (!c)
        return nullptr;
    EXPECT_TRUE(run_until(io, [&] { return c.value()->connected(); }));
    return c.value();
}

// Everything `c` sent so far has been processed by the broker.
inline void flush(boost::asio::io_context& io, const std::shared_ptr<bus::Client>& c) {
    std::optional<std::error_code> done;
    c->flush([&](std::error_code ec) { done = ec; });
    ASSERT_TRUE(run_until(io, [&] { return done.has_value(); }));
    ASSERT_FALSE(*done) << done->message();
}

} // namespace bus::test
