// "unix-relay": the floor of any broker over Unix stream sockets on this machine. A process of
// its own that does nothing but move bytes: one epoll loop with its descriptors registered once
// (level-triggered, never re-armed), a read() and a write() per wake-up, no framing, no routing,
// no allocation. The requester and the responder use blocking read/write on their sockets.
//
// A request/reply round trip through it is four socket hops and three processes that wake each
// other in turn, which is what any broker's round trip is made of; what a real broker adds
// (parsing, routing, its event loop's bookkeeping) comes on top. Request/reply only: it is the
// yardstick for the serial round trip, where the hops are all there is.
//
// Wire: each client first writes one byte, 'Q' (requester) or 'R' (responder); then the
// requester writes u32 LE length + payload frames and reads the same back. The relay copies
// requester bytes to the responder and responder bytes to the requester as they come: with one
// of each, the frames need no parsing to arrive whole and in order.
#include "peers.hpp"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>

namespace bench::broker {
namespace {

int unix_socket() {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        throw_errno("socket");
    return fd;
}

sockaddr_un address(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path)
        throw std::runtime_error("socket path too long: " + path);
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    return addr;
}

// The relay process: accepts a requester and a responder (in either order), then copies bytes
// between them until either leaves. With `rearm`, every read is followed by an
// epoll_ctl(EPOLL_CTL_MOD) of the descriptor, as Boost.Asio's reactor issues on every
// async_wait: "unix-relay-rearm" measures what that syscall costs a round trip.
[[noreturn]] void relay(const std::string& path, bool rearm) {
    const int listener = unix_socket();
    const sockaddr_un addr = address(path);
    if (::bind(listener, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listener, 16) != 0)
        throw_errno("bind " + path);
    int requester = -1, responder = -1;
    while (requester < 0 || responder < 0) {
        const int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0)
            throw_errno("accept");
        // wait_for_unix() connects and leaves without a word: not a client.
        char role = 0;
        if (::read(fd, &role, 1) != 1 || (role != 'Q' && role != 'R')) {
            ::close(fd);
            continue;
        }
        (role == 'Q' ? requester : responder) = fd;
    }
    const int ep = ::epoll_create1(EPOLL_CLOEXEC);
    for (const int fd : {requester, responder}) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = fd;
        if (::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
            throw_errno("epoll_ctl");
    }
    char buffer[64 * 1024];
    for (;;) {
        epoll_event events[2];
        const int n = ::epoll_wait(ep, events, 2, -1);
        for (int i = 0; i < n; ++i) {
            const int from = events[i].data.fd;
            const ssize_t r = ::read(from, buffer, sizeof buffer);
            if (r <= 0)
                ::_exit(0);
            write_all(from == requester ? responder : requester,
                      std::string_view(buffer, static_cast<std::size_t>(r)));
            if (rearm) {
                epoll_event ev{};
                ev.events = EPOLLIN;
                ev.data.fd = from;
                if (::epoll_ctl(ep, EPOLL_CTL_MOD, from, &ev) != 0)
                    throw_errno("epoll_ctl");
            }
        }
    }
}

int connect_as(const std::string& path, char role) {
    const int fd = unix_socket();
    const sockaddr_un addr = address(path);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
        throw_errno("connect " + path);
    write_all(fd, std::string_view(&role, 1));
    return fd;
}

class RelayPeer final : public Peer {
public:
    explicit RelayPeer(bool rearm) : rearm_(rearm) {}
    std::string name() const override { return rearm_ ? "unix-relay-rearm" : "unix-relay"; }
    bool serves(Pattern pattern) const override { return pattern == Pattern::reqrep; }

    void start(Pattern, const std::string& dir) override {
        path_ = dir + "/relay.sock";
        const std::string path = path_;
        server_ = Server::fork(dir + "/relay.log", [path, rearm = rearm_] { relay(path, rearm); });
        wait_for_unix(path_, 10, &server_);
    }
    void stop() override { server_.stop(); }
    pid_t broker_pid() const override { return server_.pid(); }

    void subscriber(const SubSpec&, RoleIo&) override { unsupported(); }
    void publisher(const PubSpec&, RoleIo&) override { unsupported(); }

    void responder(RoleIo& io) override {
        const int fd = connect_as(path_, 'R');
        io.ready();
        std::string frame;
        for (;;) {
            std::uint32_t size = 0;
            read_exact(fd, reinterpret_cast<char*>(&size), sizeof size);
            frame.resize(sizeof size + size);
            std::memcpy(frame.data(), &size, sizeof size);
            read_exact(fd, frame.data() + sizeof size, size);
            write_all(fd, frame);
        }
    }

    void requester(const ReqSpec& spec, RoleIo& io) override {
        const int fd = connect_as(path_, 'Q');
        const std::string payload = make_payload(std::max<std::size_t>(spec.size, 8));
        const auto size = static_cast<std::uint32_t>(payload.size());
        std::string frame(sizeof size + payload.size(), '\0');
        std::memcpy(frame.data(), &size, sizeof size);
        std::memcpy(frame.data() + sizeof size, payload.data(), payload.size());
        std::string reply(frame.size(), '\0');

        RoundTrips trips(spec);
        auto issue = [&] {
            const std::uint64_t seq = trips.sent();
            std::memcpy(frame.data() + sizeof size, &seq, sizeof seq);
            write_all(fd, frame);
        };
        for (int i = 0; i < spec.in_flight; ++i)
            issue();
        while (trips.outstanding() > 0) {
            read_exact(fd, reply.data(), reply.size());
            std::uint64_t seq;
            std::memcpy(&seq, reply.data() + sizeof size, sizeof seq);
            if (std::memcmp(reply.data(), frame.data(), sizeof size) != 0)
                throw std::runtime_error("malformed reply");
            if (trips.answered(seq))
                issue();
        }
        ::close(fd);
        io.result(to_json(trips.result()));
    }

private:
    [[noreturn]] static void unsupported() {
        throw std::logic_error("unix-relay serves request/reply only");
    }

    bool rearm_;
    std::string path_;
    Server server_;
};

} // namespace

std::unique_ptr<Peer> make_relay_peer(bool rearm) {
    return std::make_unique<RelayPeer>(rearm);
}

} // namespace bench::broker
