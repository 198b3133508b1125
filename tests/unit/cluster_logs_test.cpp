// Worker output in cluster mode (bus/src/cluster/logs.hpp): UTF-8 repair, the log line format
// read back, rotation and tail of the files, and lines cut from a pipe.
#include "../support/temp_dir.hpp"
#include "cluster/logs.hpp"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>

#include <filesystem>
#include <fstream>
#include <thread>

#include <sys/stat.h>
#include <unistd.h>

namespace {

using bus::cluster::detail::format_log_line;
using bus::cluster::detail::LogFile;
using bus::cluster::detail::max_log_line;
using bus::cluster::detail::OutputReader;
using bus::cluster::detail::parse_log_line;
using bus::cluster::detail::valid_utf8;

const std::string replacement = "\xEF\xBF\xBD";

TEST(LogUtf8, KeepsValidTextAndReplacesEachBadByte) {
    EXPECT_EQ(valid_utf8("plain ascii"), "plain ascii");
    EXPECT_EQ(valid_utf8("h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80"),
              "h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80");
    EXPECT_EQ(valid_utf8("a\xFF"
                         "b"),
              "a" + replacement + "b");
    EXPECT_EQ(valid_utf8("\xC0\xAF"), replacement + replacement);                   // overlong '/'
    EXPECT_EQ(valid_utf8("\xED\xA0\x80"), replacement + replacement + replacement); // surrogate
    EXPECT_EQ(valid_utf8("\xF4\x90\x80\x80").size(), 4 * replacement.size());       // > U+10FFFF
    EXPECT_EQ(valid_utf8("cut \xE2\x82"), "cut " + replacement + replacement);      // truncated
    EXPECT_EQ(valid_utf8(std::string("nul\0in", 6)), std::string("nul\0in", 6));
}

TEST(LogLineFormat, ReadsBackWhatItWrote) {
    bus::v1::LogLine line;
    line.set_app("web-1");
    line.set_instance(3);
    line.set_pid(4242);
    line.set_stream("err");
    line.set_text("something: with colons [and] brackets  and  spaces ");
    line.set_unix_ns(1'795'000'000'123'456'000);
    const std::string text = format_log_line(line);
    EXPECT_EQ(text.rfind(" web-1[3] 4242 err: something", 40), 27u) << text;
    auto back = parse_log_line(text);
    ASSERT_TRUE(back) << text;
    EXPECT_EQ(back->app(), "web-1");
    EXPECT_EQ(back->instance(), 3u);
    EXPECT_EQ(back->pid(), 4242u);
    EXPECT_EQ(back->stream(), "err");
    EXPECT_EQ(back->text(), line.text());
    EXPECT_EQ(back->unix_ns(), line.unix_ns());
}

TEST(LogLineFormat, RefusesLinesNotInTheForm) {
    for (const char* bad :
         {"", "hello", "2026-11-26T15:40:01.123456Z web[0] 12 out:",
          "2026-11-26T15:40:01.123456Z web[0] 12 bad: x",
          "2026-11-26T15:40:01.123456 web[0] 12 out: x",
          "2026-13-45T15:40:01.123456Z web[0] 12 out: x",
          "2026-11-26T15:40:01.12345xZ web[0] 12 out: x",
          "2026-11-26T15:40:01.123456Z web 12 out: x", "2026-11-26T15:40:01.123456Z [0] 12 out: x",
          "2026-11-26T15:40:01.123456Z web[x] 12 out: x",
          "2026-11-26T15:40:01.123456Z web[0] -1 out: x",
          "2026-11-26T15:40:01.123456Z web[0] 99999999999 out: x",
          "6026-11-26T15:40:01.123456Z web[0] 12 out: x", // past int64 nanoseconds
          "1969-12-31T23:59:59.000000Z web[0] 12 out: x"})
        EXPECT_FALSE(parse_log_line(bad)) << bad;
}

class LogFileTest : public ::testing::Test {
protected:
    static std::string lines(int from, int to) {
        std::string out;
        for (int i = from; i < to; ++i)
            out += "line " + std::to_string(i) + "\n";
        return out;
    }
    bus::test::TempDir tmp_;
    const std::string dir_ = tmp_.path();
    std::vector<std::string> errors_;
    std::function<void(const std::string&)> error_ = [this](const std::string& e) {
        errors_.push_back(e);
    };
};

TEST_F(LogFileTest, TailReadsTheLastLinesOldestFirst) {
    LogFile file(dir_ + "/logs", "web", 1 << 20, 3);
    file.append(lines(0, 10000), error_);
    EXPECT_TRUE(errors_.empty());
    const auto tail = file.tail(3);
    EXPECT_EQ(tail, (std::vector<std::string>{"line 9997", "line 9998", "line 9999"}));
    EXPECT_EQ(file.tail(20000).size(), 10000u);
    EXPECT_EQ(file.tail(20000).front(), "line 0");
    EXPECT_TRUE(file.tail(0).empty());
    struct stat st {};
    ASSERT_EQ(::stat(file.path().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u) << "logs may hold what only busd's user should read";
}

TEST_F(LogFileTest, RotatesPastTheSizeAndKeepsTheNumberOfFiles) {
    // About 100 bytes a batch, 1 KiB a file, 3 files in all.
    LogFile file(dir_, "web", 1024, 3);
    for (int batch = 0; batch < 100; ++batch)
        file.append(lines(batch * 10, batch * 10 + 10), error_);
    EXPECT_TRUE(std::filesystem::exists(dir_ + "/web.log"));
    EXPECT_TRUE(std::filesystem::exists(dir_ + "/web.log.1"));
    EXPECT_TRUE(std::filesystem::exists(dir_ + "/web.log.2"));
    EXPECT_FALSE(std::filesystem::exists(dir_ + "/web.log.3"));
    for (const char* name : {"/web.log", "/web.log.1", "/web.log.2"})
        EXPECT_LE(std::filesystem::file_size(dir_ + name), 1024u) << name;
    // The tail runs across the rotated files, in order, ending with the last line written.
    const auto tail = file.tail(150);
    ASSERT_GT(tail.size(), 100u);
    EXPECT_EQ(tail.back(), "line 999");
    for (std::size_t i = 1; i < tail.size(); ++i)
        EXPECT_EQ(std::stoi(tail[i].substr(5)), std::stoi(tail[i - 1].substr(5)) + 1) << i;
}

TEST_F(LogFileTest, AnUnwritableDirectoryIsReportedOnce) {
    std::ofstream(dir_ + "/file") << "x";
    LogFile file(dir_ + "/file/logs", "web", 1024, 2); // a directory below a file
    file.append("a\n", error_);
    file.append("b\n", error_);
    ASSERT_EQ(errors_.size(), 1u);
    EXPECT_NE(errors_[0].find(dir_ + "/file/logs/web.log"), std::string::npos) << errors_[0];
    EXPECT_TRUE(file.tail(5).empty());
}

// Lines as a worker writes them into its pipe: split at newlines, cut at max_log_line, the
// last one kept without its newline.
TEST(OutputReaderTest, CutsWhatArrivesIntoLines) {
    boost::asio::io_context io;
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    std::vector<std::string> got;
    OutputReader::start(io, bus::UniqueFd(fds[0]), [&](std::vector<std::string>& lines) {
        got.insert(got.end(), lines.begin(), lines.end());
    });
    const std::string long_line(max_log_line * 2 + 10, 'x');
    // A line of exactly max_log_line: one line, not one and an empty one.
    const std::string exact(max_log_line, 'e');
    std::string input = "one\ntwo\n\nthree " + long_line + "\n" + exact + "\nlast without newline";
    std::thread writer([&] {
        std::string_view rest = input;
        while (!rest.empty()) {
            const auto n = ::write(fds[1], rest.data(), std::min<std::size_t>(rest.size(), 777));
            ASSERT_GT(n, 0);
            rest.remove_prefix(static_cast<std::size_t>(n));
        }
        ::close(fds[1]);
    });
    io.run();
    writer.join();
    ASSERT_EQ(got.size(), 8u);
    EXPECT_EQ(got[0], "one");
    EXPECT_EQ(got[1], "two");
    EXPECT_EQ(got[2], "");
    EXPECT_EQ(got[3].size(), max_log_line);
    EXPECT_EQ(got[3].rfind("three xx", 0), 0u);
    EXPECT_EQ(got[4], std::string(max_log_line, 'x'));
    EXPECT_EQ(got[5], std::string(16, 'x'));
    EXPECT_EQ(got[6], exact);
    EXPECT_EQ(got[7], "last without newline");
}

} // namespace
