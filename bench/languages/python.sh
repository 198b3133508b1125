#!/usr/bin/env bash
# The Python part of `bench/run languages`: installs clients/python into a venv of Debian's
# python3 as the tests do (tests/python/venv.sh, offline) and runs python_bench.py against
# BUILD's busd.
#   bench/languages/python.sh BUILD_DIR [--seconds S] [--rounds N] [--only NAME,...]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$1
shift
"$root/tests/python/venv.sh" /usr/bin/python3 "$build/python-venv" "$root" >&2
exec "$build/python-venv/bin/python" "$root/bench/languages/python_bench.py" \
  --busd "$build/bin/busd" "$@"
