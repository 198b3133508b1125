// The names busd gives errors on the wire, and how a client reads them back: one table.
#include <bus/error.hpp>

#include <gtest/gtest.h>

TEST(ErrorWireName, EveryNamedErrorReadsBackAsItself) {
    using bus::errc;
    for (errc e : {errc::no_responders, errc::service_lost, errc::timeout, errc::no_such_client,
                   errc::invalid_subject, errc::forbidden, errc::message_too_large,
                   errc::fds_not_supported, errc::expired}) {
        const auto name = bus::error_wire_name(e);
        EXPECT_NE(name, "bad_request") << static_cast<int>(e);
        EXPECT_EQ(bus::error_from_wire_name(name), bus::make_error_code(e)) << name;
    }
}

TEST(ErrorWireName, OthersGoAsBadRequestAndUnknownNamesAreTheServicesOwn) {
    EXPECT_EQ(bus::error_wire_name(bus::errc::bad_frame), "bad_request");
    EXPECT_EQ(bus::error_wire_name(bus::errc::frame_too_large), "bad_request");
    // The queue's errors never travel through busd.
    EXPECT_EQ(bus::error_wire_name(bus::errc::peer_dead), "bad_request");
    EXPECT_EQ(bus::error_wire_name(bus::errc::peer_closed), "bad_request");
    EXPECT_EQ(bus::error_from_wire_name("bad_request"), bus::make_error_code(bus::errc::bad_frame));
    EXPECT_EQ(bus::error_from_wire_name("out_of_stock"),
              bus::make_error_code(bus::errc::request_failed));
    EXPECT_EQ(bus::error_from_wire_name(""), bus::make_error_code(bus::errc::request_failed));
}

TEST(ErrorCondition, ABusErrorIsTheGenericConditionItMatches) {
    using bus::errc;
    EXPECT_EQ(make_error_code(errc::timeout), std::errc::timed_out);
    EXPECT_EQ(make_error_code(errc::forbidden), std::errc::permission_denied);
    EXPECT_EQ(make_error_code(errc::message_too_large), std::errc::message_size);
    EXPECT_EQ(make_error_code(errc::record_too_large), std::errc::message_size);
    EXPECT_EQ(make_error_code(errc::fds_not_supported), std::errc::operation_not_supported);
    EXPECT_EQ(make_error_code(errc::invalid_subject), std::errc::invalid_argument);
    EXPECT_EQ(make_error_code(errc::peer_closed), std::errc::broken_pipe);
    // A crash is not a clean close, in either direction.
    EXPECT_NE(make_error_code(errc::peer_dead), std::errc::broken_pipe);
    EXPECT_NE(make_error_code(errc::peer_closed), errc::peer_dead);
    // Still itself, and nothing it is not.
    EXPECT_EQ(make_error_code(errc::timeout), errc::timeout);
    EXPECT_NE(make_error_code(errc::timeout), std::errc::operation_canceled);
    EXPECT_NE(make_error_code(errc::full), std::errc::resource_unavailable_try_again);
    EXPECT_NE(make_error_code(errc::no_responders), std::errc::timed_out);
    // A system error is not a bus one.
    EXPECT_NE(std::make_error_code(std::errc::timed_out), errc::timeout);
}
