// TempDir: a fresh directory under /tmp for one test's files, removed with everything in it
// when the test is done (the object goes out of scope), so no run leaves files for the next.
#pragma once

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

namespace bus::test {

class TempDir {
public:
    TempDir() {
        std::string tmpl = "/tmp/bus-test-XXXXXX";
        if (!::mkdtemp(tmpl.data()))
            throw std::system_error(errno, std::generic_category(), "mkdtemp");
        path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ignored; // a test that fails half-way must not also throw here
        std::filesystem::remove_all(path_, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    const std::string& path() const noexcept { return path_; }
    // `name` inside the directory.
    std::string operator/(std::string_view name) const { return path_ + "/" + std::string(name); }
    // Writes `content` to `name` inside the directory; returns the file's path.
    std::string write(std::string_view name, std::string_view content) const {
        const std::string file = *this / name;
        std::ofstream out(file, std::ios::binary | std::ios::trunc);
        out << content;
        if (!out)
            throw std::runtime_error("cannot write " + file);
        return file;
    }

private:
    std::string path_;
};

} // namespace bus::test
