// The dashboard's files (bus/src/http/assets/), compiled into busd by cmake/embed_assets.cmake:
// busd serves them with no file system access, so a path can name nothing else.
#pragma once

#include <string_view>

namespace bus::http {

struct Asset {
    std::string_view content_type;
    std::string_view content;
};

// "index.html", "app.js", ...; null if there is no such asset.
const Asset* find_asset(std::string_view name);

} // namespace bus::http
