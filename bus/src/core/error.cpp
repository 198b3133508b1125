#include "bus/error.hpp"

#include <cerrno>
#include <string>
#include <utility>

namespace bus {
namespace {

class Category final : public std::error_category {
public:
    const char* name() const noexcept override { return "bus"; }
    std::string message(int value) const override {
        switch (static_cast<errc>(value)) {
        case errc::frame_too_large:
            return "frame longer than the limit";
        case errc::bad_frame:
            return "frame does not hold a valid envelope";
        case errc::truncated_frame:
            return "peer closed in the middle of a frame";
        case errc::fd_mismatch:
            return "frame claims more file descriptors than arrived with it";
        case errc::unexpected_fds:
            return "file descriptors arrived that no frame claims";
        case errc::too_many_fds:
            return "too many file descriptors for one message";
        case errc::control_truncated:
            return "file descriptors were dropped by the kernel (MSG_CTRUNC)";
        case errc::bad_json:
            return "line is not valid JSON";
        case errc::channel_closed:
            return "channel closed";
        case errc::fds_not_supported:
            return "file descriptors cannot travel this way";
        case errc::handle_not_delivered:
            return "peer did not receive the handle (NODE_HANDLE_NACK)";
        case errc::no_parent_channel:
            return "process was not started with a channel (no BUS_CHANNEL_FD or "
                   "NODE_CHANNEL_FD)";
        case errc::unsupported_serialization:
            return "unsupported IPC serialization (only 'json' is spoken with Node)";
        case errc::wrong_type:
            return "payload is not of the requested type";
        case errc::no_responders:
            return "no responders: nobody serves this service";
        case errc::timeout:
            return "timed out";
        case errc::service_lost:
            return "service lost: the instance handling the request went away";
        case errc::broker_unavailable:
            return "broker unavailable";
        case errc::no_such_client:
            return "no such client";
        case errc::invalid_subject:
            return "invalid subject or pattern";
        case errc::forbidden:
            return "forbidden by the broker's access rules";
        case errc::message_too_large:
            return "message over the broker's size limit";
        case errc::no_server_key:
            return "tcp:// needs the broker's CURVE public key (ClientOptions::server_key or "
                   "BUS_SERVER_KEY)";
        case errc::request_failed:
            return "the service answered with an error";
        case errc::expired:
            return "the request's deadline passed before it reached a service";
        case errc::bad_endpoint:
            return "endpoint must be ipc://PATH, unix://PATH or tcp://HOST:PORT";
        case errc::full:
            return "queue is full";
        case errc::empty:
            return "queue is empty";
        case errc::peer_dead:
            return "the process on the other side of the queue died";
        case errc::layout_mismatch:
            return "shared-memory segment is not a queue of this version and layout";
        case errc::record_too_large:
            return "record larger than the queue can ever hold";
        case errc::queue_in_use:
            return "that end of the queue is held by another live process";
        case errc::bad_record:
            return "invalid record header in the queue (corrupted by a peer)";
        case errc::peer_closed:
            return "the other side of the queue closed it (every record it sent was delivered)";
        }
        return "unknown bus error " + std::to_string(value);
    }
    // Where a generic condition fits, a bus error is equivalent to it, so code written
    // against std::errc (`ec == std::errc::timed_out`) reads bus errors too. Only exact fits:
    // `full` and `empty` are not EAGAIN to code that retries on it, for instance.
    std::error_condition default_error_condition(int value) const noexcept override {
        switch (static_cast<errc>(value)) {
        case errc::timeout:
            return std::errc::timed_out;
        case errc::forbidden:
            return std::errc::permission_denied;
        case errc::frame_too_large:
        case errc::message_too_large:
        case errc::record_too_large:
            return std::errc::message_size;
        case errc::fds_not_supported:
            return std::errc::operation_not_supported;
        case errc::bad_endpoint:
        case errc::invalid_subject:
            return std::errc::invalid_argument;
        // A pipe's EPIPE: the other end is gone, in order. (peer_dead is not: nothing
        // generic says "crashed".)
        case errc::peer_closed:
            return std::errc::broken_pipe;
        default:
            return {value, *this};
        }
    }
};

} // namespace

const std::error_category& bus_category() noexcept {
    static const Category category;
    return category;
}

namespace {
constexpr std::pair<std::string_view, errc> wire_names[] = {
    {"no_responders", errc::no_responders},
    {"service_lost", errc::service_lost},
    {"timeout", errc::timeout},
    {"no_such_client", errc::no_such_client},
    {"invalid_subject", errc::invalid_subject},
    {"forbidden", errc::forbidden},
    {"message_too_large", errc::message_too_large},
    {"fds_not_supported", errc::fds_not_supported},
    {"expired", errc::expired},
    {"bad_request", errc::bad_frame},
};
} // namespace

std::string_view error_wire_name(errc e) noexcept {
    for (const auto& [name, code] : wire_names)
        if (code == e)
            return name;
    return "bad_request";
}

std::error_code error_from_wire_name(std::string_view name) noexcept {
    for (const auto& [n, code] : wire_names)
        if (n == name)
            return code;
    return errc::request_failed;
}

std::error_code last_error() noexcept {
    return {errno, std::system_category()};
}

} // namespace bus
