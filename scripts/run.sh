#!/usr/bin/env bash
# The main job on a working default: set up, build, start busd on its default endpoints (unless
# one already serves them), and show a subscriber and a publisher talking through it; then a
# parent and its bus-echo child over a channel.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh build -DCMAKE_BUILD_TYPE=Release >/dev/null
bin=build/bin

busd_pid=""
sub_out=$(mktemp)
cleanup() {
  [ -n "$busd_pid" ] && kill "$busd_pid" 2>/dev/null && wait "$busd_pid" 2>/dev/null
  rm -f "$sub_out"
}
trap cleanup EXIT

echo "== busd"
"$bin/busd" &
busd_pid=$!
sleep 0.3
if ! kill -0 "$busd_pid" 2>/dev/null; then
  busd_pid=""  # another busd already serves the default endpoints: use that one
  wait 2>/dev/null || true
fi

echo "== a subscriber and a publisher, through busd"
"$bin/bus-subscriber" 'demo.>' 5 > "$sub_out" &
sub_pid=$!
for _ in $(seq 50); do grep -q '^subscribed' "$sub_out" && break; sleep 0.1; done
"$bin/bus-publisher" demo.heartbeat 5
wait "$sub_pid"
cat "$sub_out"

echo "== a parent and its child over a channel (with a passed descriptor)"
"$bin/bus-parent-demo"
