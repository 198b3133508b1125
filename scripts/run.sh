#!/usr/bin/env bash
# The main job on a working default: set up, build, and run a parent with a bus-echo child
# over a channel (messages both ways and a passed file descriptor).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh build -DCMAKE_BUILD_TYPE=Release
exec build/bin/bus-parent-demo "$@"
