// TempDir: a private directory under /tmp (mkdtemp, mode 0700), removed with everything in it
// when the object goes, however the test ends (a failed ASSERT returns through its destructor).
#pragma once

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

#include <stdlib.h>

namespace bus::test {

class TempDir {
public:
    TempDir() {
        char tmpl[] = "/tmp/bus-test-XXXXXX";
        if (::mkdtemp(tmpl) == nullptr)
            throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
        path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ignored; // a destructor must not throw; what is left is in /tmp
        std::filesystem::remove_all(path_, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    const std::string& path() const { return path_; }
    // The path of `name` inside the directory (not created).
    std::string file(std::string_view name) const { return path_ + "/" + std::string(name); }

private:
    std::string path_;
};

} // namespace bus::test
