// The C++ side of the Python client's fd tests (tests/python/test_fds.py): a bus::Client that
// takes file descriptors from a Python client and gives it some.
//
//   python_fd_peer ENDPOINT
//     fd.read    reads what the request's fd holds (a pipe, to its end) and replies with it
//     fd.write   writes "written by c++" into the request's fd, replies "ok"
//     fd.give    replies "pipe" with the read end of a pipe that holds "hello from c++"
//     direct     a direct message comes back to its sender with its payload and its fds
// Prints "ready" once busd has its services, then serves until killed.
#include <bus/client.hpp>

#include <cstdio>
#include <string>

#include <fcntl.h>
#include <unistd.h>

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: python_fd_peer ENDPOINT\n");
        return 2;
    }
    boost::asio::io_context io;
    bus::ClientOptions options;
    options.name = "python-fd-peer";
    auto connected = bus::Client::connect(io, argv[1], options);
    if (!connected) {
        std::fprintf(stderr, "python_fd_peer: %s\n", connected.error().message().c_str());
        return 1;
    }
    auto& c = connected.value();
    c->serve("fd.read", [](bus::Message& m, bus::Responder& r) {
        if (m.fds.size() != 1)
            return r.fail("want_one_fd", std::to_string(m.fds.size()) + " fds");
        std::string text;
        char buf[4096];
        for (ssize_t n; (n = ::read(m.fds[0].get(), buf, sizeof buf)) > 0;)
            text.append(buf, static_cast<std::size_t>(n));
        r.reply_bytes(text);
    });
    c->serve("fd.write", [](bus::Message& m, bus::Responder& r) {
        if (m.fds.size() != 1)
            return r.fail("want_one_fd", std::to_string(m.fds.size()) + " fds");
        const std::string text = "written by c++";
        if (::write(m.fds[0].get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()))
            return r.fail("write_failed");
        r.reply_bytes("ok");
    });
    c->serve("fd.give", [](bus::Message&, bus::Responder& r) {
        int p[2];
        if (::pipe2(p, O_CLOEXEC) < 0)
            return r.fail("pipe_failed");
        bus::UniqueFd read_end(p[0]), write_end(p[1]);
        const std::string text = "hello from c++";
        (void)!::write(write_end.get(), text.data(), text.size());
        write_end = bus::UniqueFd(); // the reader sees the end after the text
        std::vector<bus::UniqueFd> fds;
        fds.push_back(std::move(read_end));
        r.reply_bytes("pipe", std::move(fds));
    });
    auto* client = c.get();
    c->on_direct([client](bus::Message& m) {
        client->send_bytes_to(m.source(), m.payload(), std::move(m.fds));
    });
    if (auto ec = c->flush_wait()) {
        std::fprintf(stderr, "python_fd_peer: %s\n", ec.message().c_str());
        return 1;
    }
    std::printf("ready\n");
    std::fflush(stdout);
    io.run(); // until killed
    return 0;
}
