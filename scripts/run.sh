#!/usr/bin/env bash
# The main job on a working default: set up, build, start busd on its default endpoints (unless
# one already serves them), and show a subscriber and a publisher talking through it; then a
# parent and its bus-echo child over a channel; then busd as a cluster master, handing HTTP
# connections to two bus-http-hello workers in turn.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh build -DCMAKE_BUILD_TYPE=Release >/dev/null
bin=build/bin

busd_pid=""
cluster_pid=""
sub_out=$(mktemp)
cluster_dir=$(mktemp -d)
cleanup() {
  [ -n "$busd_pid" ] && kill "$busd_pid" 2>/dev/null && wait "$busd_pid" 2>/dev/null
  [ -n "$cluster_pid" ] && kill "$cluster_pid" 2>/dev/null && wait "$cluster_pid" 2>/dev/null
  rm -rf "$sub_out" "$cluster_dir"
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

echo "== a cluster: busd runs two bus-http-hello workers and hands each one connections in turn"
cat > "$cluster_dir/busd.toml" <<EOF
[[app]]
name = "hello"
command = "$PWD/$bin/bus-http-hello"
instances = 2
listen = ["tcp://127.0.0.1:0"]
EOF
"$bin/busd" -e "unix://$cluster_dir/busd.sock" -c "$cluster_dir/busd.toml" 2> "$cluster_dir/busd.log" &
cluster_pid=$!
for _ in $(seq 100); do
  [ "$(grep -c ') ready' "$cluster_dir/busd.log")" -ge 2 ] && break
  sleep 0.05
done
port=$(sed -n 's|.*listening on tcp://127.0.0.1:\([0-9]*\).*|\1|p' "$cluster_dir/busd.log" | head -1)
for _ in 1 2 3 4; do
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf 'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
  tr -d '\r' <&3 | grep -E '^(HTTP/1.1|X-Instance|X-Pid|Hello)' | paste -sd' ' -
  exec 3<&-
done
kill "$cluster_pid" && wait "$cluster_pid" || true
cluster_pid=""
cat "$cluster_dir/busd.log"
