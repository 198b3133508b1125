#!/usr/bin/env bash
# What a user does: `pip install ./clients/python` into a fresh venv that sees Debian's
# python3-protobuf (--system-site-packages), then imports the package. The python.* tests run
# in this venv, so they test the installed package, not the source tree.
#
#   tests/python/venv.sh PYTHON VENV_DIR SOURCE_DIR
# --no-index: nothing may come from PyPI (the build backend needs only the standard library
# and protoc; the one dependency, protobuf, is Debian's).
set -euo pipefail
python=$1 venv=$2 source=$3
"$python" -m venv --system-site-packages --clear "$venv"
"$venv/bin/pip" install --quiet --no-index --no-cache-dir "$source/clients/python"
cd "$venv"  # not the source tree: the import must find the installed package
"$venv/bin/python" - <<'PY'
import bus, bus.sync, bus.v1.envelope_pb2, bus.v1.broker_pb2
assert "site-packages" in bus.__file__, bus.__file__
assert bus.v1.envelope_pb2.Envelope.DESCRIPTOR.file.name == "bus/v1/envelope.proto"
print("installed", bus.__file__)
PY
