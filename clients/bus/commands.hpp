// The command groups, one source file each: main.cpp has each add its subcommands, and the
// one the user picked sets `run`.
#pragma once

#include "connect.hpp"

#include <CLI/CLI.hpp>

#include <functional>

namespace bus::cli {

using Runner = std::function<int()>;
void add_sub(CLI::App& app, Global& g, Runner& run);
void add_pub(CLI::App& app, Global& g, Runner& run);
void add_req(CLI::App& app, Global& g, Runner& run); // req and serve
void add_ls(CLI::App& app, Global& g, Runner& run);  // ls, status, types
void add_monitor(CLI::App& app, Global& g, Runner& run);
void add_top(CLI::App& app, Global& g, Runner& run);
void add_bench(CLI::App& app, Global& g, Runner& run);
void add_shm(CLI::App& app, Global& g, Runner& run); // shm ls, shm rm (no broker)
void add_cluster(CLI::App& app, Global& g, Runner& run);

} // namespace bus::cli
