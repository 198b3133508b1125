#include "bus/endpoint.hpp"

#include <cerrno>
#include <cstdlib>

#include <sys/stat.h>
#include <unistd.h>

namespace bus {

std::string Endpoint::str() const {
    switch (scheme) {
    case Scheme::ipc:
        return "ipc://" + address;
    case Scheme::unix_socket:
        return "unix://" + address;
    case Scheme::tcp:
        return "tcp://" + address;
    }
    return address;
}

Result<Endpoint> parse_endpoint(std::string_view text) {
    const auto sep = text.find("://");
    if (sep == std::string_view::npos || sep + 3 == text.size())
        return errc::bad_endpoint;
    const auto scheme = text.substr(0, sep);
    std::string address(text.substr(sep + 3));
    if (address.find('\0') != std::string::npos)
        return errc::bad_endpoint;
    if (scheme == "ipc")
        return Endpoint{Endpoint::Scheme::ipc, std::move(address)};
    if (scheme == "unix")
        return Endpoint{Endpoint::Scheme::unix_socket, std::move(address)};
    if (scheme == "tcp" && address.find(':') != std::string::npos)
        return Endpoint{Endpoint::Scheme::tcp, std::move(address)};
    return errc::bad_endpoint;
}

Result<std::string> runtime_dir() {
    std::string dir;
    if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg && *xdg)
        dir = std::string(xdg) + "/bus";
    else
        dir = "/tmp/bus-" + std::to_string(::getuid());
    if (::mkdir(dir.c_str(), 0700) < 0 && errno != EEXIST)
        return last_error();
    struct stat st {};
    if (::lstat(dir.c_str(), &st) < 0)
        return last_error();
    // Refuse a directory someone else made or opened up: the sockets in it would be theirs.
    if (!S_ISDIR(st.st_mode) || st.st_uid != ::getuid() || (st.st_mode & 0077) != 0)
        return std::make_error_code(std::errc::permission_denied);
    return dir;
}

Result<std::string> default_endpoint() {
    if (const char* env = std::getenv("BUS_ENDPOINT"); env && *env)
        return std::string(env);
    return default_unix_endpoint();
}

Result<std::string> default_ipc_endpoint() {
    auto dir = runtime_dir();
    if (!dir)
        return dir.error();
    return "ipc://" + dir.value() + "/busd.zmq";
}

Result<std::string> default_unix_endpoint() {
    auto dir = runtime_dir();
    if (!dir)
        return dir.error();
    return "unix://" + dir.value() + "/busd.sock";
}

namespace {

Result<std::string> file_beside(std::string_view endpoint, const char* file) {
    auto parsed = parse_endpoint(endpoint);
    if (!parsed)
        return parsed.error();
    if (parsed.value().scheme == Endpoint::Scheme::tcp)
        return make_error_code(errc::bad_endpoint);
    const auto& path = parsed.value().address;
    const auto slash = path.rfind('/');
    return (slash == std::string::npos ? std::string(".") : path.substr(0, slash)) + "/" + file;
}

} // namespace

Result<std::string> cluster_socket_beside(std::string_view endpoint) {
    return file_beside(endpoint, "busd.cluster.sock");
}

Result<std::string> http_token_beside(std::string_view endpoint) {
    return file_beside(endpoint, "http.token");
}

} // namespace bus
