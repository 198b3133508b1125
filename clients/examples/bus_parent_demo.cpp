// bus-parent-demo: the parent side of a channel. Starts a child (bus-echo by default, or the
// command given), sends it a few messages and a pipe's write end, and prints what comes back:
// the messages, and the text the child writes through the passed descriptor.
//
//   bus-parent-demo                 # spawns bus-echo from the same directory
//   bus-parent-demo node child.js   # any child that speaks the channel (Node: --node)
#include <bus/child_process.hpp>
#include <bus/v1/cluster.pb.h>

#include <cstdio>
#include <fcntl.h>
#include <filesystem>
#include <string>
#include <unistd.h>

int main(int argc, char** argv) {
    namespace fs = std::filesystem;
    boost::asio::io_context io;
    bus::SpawnOptions options;
    std::vector<std::string> command;
    for (int i = 1; i < argc; ++i) {
        if (std::string_view(argv[i]) == "--node")
            options.channel.serialization = bus::Serialization::node_json;
        else
            command.emplace_back(argv[i]);
    }
    if (command.empty())
        command.push_back((fs::canonical("/proc/self/exe").parent_path() / "bus-echo").string());

    auto child = bus::spawn(io, command, options);
    if (!child) {
        std::fprintf(stderr, "bus-parent-demo: cannot start %s: %s\n", command[0].c_str(),
                     child.error().message().c_str());
        return 1;
    }
    auto ch = child.value()->channel();
    const int total = 3;
    int received = 0;
    ch->on_message([&](bus::Message& message) {
        bus::v1::Heartbeat beat;
        if (!message.parse(beat)) {
            std::printf("parent: got heartbeat seq=%llu back%s\n",
                        static_cast<unsigned long long>(beat.seq()),
                        message.fds.empty() ? "" : " with a descriptor");
            for (auto& fd : message.fds) {
                const std::string text = "written through the passed descriptor\n";
                (void)!::write(fd.get(), text.data(), text.size());
            }
        }
        if (++received == total)
            ch->close(); // the child sees the disconnect and exits 0
    });
    child.value()->on_exit([](int code, int signal) {
        std::printf("parent: child exited with code %d signal %d\n", code, signal);
    });

    // A pipe: the child receives its write end and hands it back; the parent writes through
    // the descriptor it gets back and reads the text from the read end. In Node mode only
    // sockets can be passed, so the demo sends messages only.
    int p[2];
    if (::pipe2(p, O_CLOEXEC) < 0)
        return 1;
    bus::UniqueFd read_end(p[0]), write_end(p[1]);
    for (int i = 1; i <= total; ++i) {
        bus::v1::Heartbeat beat;
        beat.set_seq(static_cast<unsigned long long>(i));
        const bool with_fd = i == total && options.channel.serialization == bus::Serialization::bus;
        ch->send(beat, with_fd ? bus::Fds{write_end.get()} : bus::Fds{});
    }
    write_end.reset();
    io.run();
    char buf[256];
    const ssize_t n = ::read(read_end.get(), buf, sizeof buf);
    if (n > 0)
        std::printf("parent: read back: %.*s", static_cast<int>(n), buf);
    return 0;
}
