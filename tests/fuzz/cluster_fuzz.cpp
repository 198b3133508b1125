// The cluster's text parsers: [[app]] tables (busd's config file, and `$sys.cluster.start`
// definitions), the log line format read back for `$sys.cluster.logs`, and the UTF-8 repair of
// what workers print. The first input byte picks the parser.
#include "cluster/logs.hpp"

#include <bus/cluster_supervisor.hpp>

#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1)
        return 0;
    const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
    namespace detail = bus::cluster::detail;
    switch (data[0] % 3) {
    case 0:
        try {
            // Only what the reader accepts comes back, and it is in range.
            for (const auto& app : bus::cluster::parse_apps(text, "fuzz", "/base"))
                if (app.name.empty() || app.argv.empty() || app.instances < 1 ||
                    app.instances > 1024 || (!app.cwd.empty() && app.cwd.front() != '/'))
                    __builtin_trap();
        } catch (const bus::ConfigError&) {
        }
        break;
    case 1: {
        // Whatever it gives protobuf is UTF-8 (a string field that is not fails to parse), and
        // valid text comes through unchanged.
        bus::v1::LogLine line;
        line.set_text(detail::valid_utf8(text));
        bus::v1::LogLine back;
        if (!back.ParseFromString(line.SerializeAsString()) || back.text() != line.text())
            __builtin_trap();
        if (detail::valid_utf8(line.text()) != line.text())
            __builtin_trap();
        break;
    }
    case 2:
        // A line read back formats to a line that reads back the same.
        if (auto line = detail::parse_log_line(text)) {
            auto again = detail::parse_log_line(detail::format_log_line(*line));
            if (!again || again->SerializeAsString() != line->SerializeAsString())
                __builtin_trap();
        }
        break;
    }
    return 0;
}
