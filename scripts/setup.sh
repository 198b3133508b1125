#!/usr/bin/env bash
# Installs what bus needs to build, test and benchmark on Debian 12. Idempotent: installs only
# the packages that are missing, and runs apt-get update only when it has to install.
#
#   scripts/setup.sh           # build and test
#   scripts/setup.sh --bench   # also what bench/run needs: the brokers bus is compared with
set -euo pipefail

bench=0
for arg in "$@"; do
  case "$arg" in
    --bench) bench=1 ;;
    *) echo "usage: scripts/setup.sh [--bench]" >&2; exit 2 ;;
  esac
done

# groff-base: the man pages' test (tests/man/check.sh); zsh: the zsh completion's test;
# tshark: the Wireshark dissector's test (its debconf question is answered non-interactively);
# wrk: load on a Node cluster with a C++ worker (tests/interop/node_cluster.test.js), bench/run cluster;
# libnats-dev, nats-server: busd's NATS bridge (bus/src/bridge) and its tests' cluster;
# prometheus: its promtool checks busd's /metrics (tests/integration/http_test.cpp);
# chromium: the dashboard's test drives it headless (tests/dashboard, puppeteer-core from npm,
# which never downloads a browser), fonts-dejavu-core so its pages have legible text.
# python3-protobuf, python3-pytest, python3-venv: the Python client
# (clients/python), installed by pip into a venv of Debian's python3 and tested with pytest.
packages=(
  build-essential cmake ninja-build pkg-config git ccache
  libboost-dev libzmq3-dev cppzmq-dev libprotobuf-dev libprotoc-dev protobuf-compiler
  nlohmann-json3-dev libcli11-dev libtomlplusplus-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-dev clang-format
  nodejs npm
  groff-base zsh tshark wrk
  prometheus
  libnats-dev nats-server
  chromium fonts-dejavu-core
  python3 python3-protobuf python3-pytest python3-venv
)
# bench/run broker: dbus-daemon and dbus-broker (run outside systemd through
# systemd-socket-activate, from the systemd package), sd-bus for the D-Bus clients.
if [ "$bench" -eq 1 ]; then
  packages+=(dbus dbus-broker systemd libsystemd-dev)
  # bench/shm-instructions: instruction counts under callgrind.
  packages+=(valgrind)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# Node.js may come from elsewhere than Debian (it does on the build machines); any node >= 18
# on PATH will do, so don't ask apt for it then.
if command -v node >/dev/null 2>&1 && [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 18 ]; then
  missing=("${missing[@]/nodejs}")
  missing=("${missing[@]/npm}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # Through env: sudo drops variables set in front of it (tshark asks a debconf question).
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
