"""The Python client (clients/python) beside the limit for Python on this machine: what a loop
that only reads and splits the same frames from a socket reaches (`bench/run languages`).

    python3 bench/languages/python_bench.py --busd build-bench/bin/busd [--seconds S]
        [--rounds N] [--only NAME,...]

Cases (each in its own processes, the median of the rounds shown):
  pubsub.64B   a Python publisher -> busd -> a Python subscriber (async for), 64 B payloads;
               the rate counted at the subscriber, from its first message to the end.
  read_split   the limit for the subscriber: the same frames (as busd delivers them) written
               by another process into a socketpair as fast as it can; this loop recv_into()s
               them and walks the length prefixes, nothing else.
  read_parse   (shown, not a bar) read_split plus protobuf's parse of each Envelope: the floor
               of any client that routes by the envelope's fields.
  req.serial   one request at a time: a Python requester -> busd -> a Python service (another
               process) -> busd -> back; round trips a second.
  pingpong     the limit for it: two Python processes on a socketpair, each reads a frame
               (the same request frame) and writes one back, blocking calls, no busd.
Bar: each client case >= 0.5 of its limit.
"""

import argparse
import asyncio
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import bus
from bus import _wire

PAYLOAD = b"x" * 64
BAR = 0.5


# --- the limits ----------------------------------------------------------------------------

def delivery_frame():
    """A 64 B publish as busd delivers it to a subscriber."""
    head = _wire.header(_wire.KIND_PUBLISH, b"bench.x") + b"\x42\x02c1" + b"\x60\x01"
    return _wire.frame(head, PAYLOAD)


def request_frame():
    return _wire.frame(_wire.header(_wire.KIND_REQUEST, b"bench.echo", id=123456,
                                    deadline_unix_ns=time.time_ns()), PAYLOAD)


def read_split(seconds, parse=False):
    """Frames a second through recv_into + the length walk (with ``parse``: and protobuf's
    parse of each Envelope, the least a client must do to route a frame)."""
    frame = delivery_frame()
    batch = frame * (128 * 1024 // len(frame))
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        try:
            while True:
                b.sendall(batch)
        except OSError:
            os._exit(0)
    b.close()
    buf = bytearray(256 * 1024)
    view = memoryview(buf)
    unpack = _wire.unpack_length
    count = 0
    rest = b""
    end = time.perf_counter() + seconds
    start = None
    while True:
        n = a.recv_into(buf)
        if start is None:
            start = time.perf_counter()
        data = rest + view[:n] if rest else view[:n]
        off, size = 0, len(data)
        while size - off >= 4:
            length = unpack(data, off)[0]
            if off + 4 + length > size:
                break
            if parse:
                _wire.Envelope.FromString(data[off + 4:off + 4 + length])
            off += 4 + length
            count += 1
        rest = bytes(data[off:])
        if count & 0xFF == 0 and time.perf_counter() > end:
            break
    elapsed = time.perf_counter() - start
    a.close()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return count / elapsed


def _read_frame(sock, unpack=_wire.unpack_length):
    head = sock.recv(4, socket.MSG_WAITALL)
    body = sock.recv(unpack(head, 0)[0], socket.MSG_WAITALL)
    return head + body


def pingpong(seconds):
    frame = request_frame()
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        try:
            while True:
                b.sendall(_read_frame(b))
        except (OSError, struct.error):  # the other end closed
            os._exit(0)
    b.close()
    count = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        a.sendall(frame)
        _read_frame(a)
        count += 1
        if count & 0xFF == 0 and time.perf_counter() > end:
            break
    elapsed = time.perf_counter() - start
    a.close()
    os.waitpid(pid, 0)
    return count / elapsed


# --- the client ----------------------------------------------------------------------------

def child(target):
    """Runs ``target()`` (a coroutine function) in a forked process; returns its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            asyncio.run(target())
        finally:
            os._exit(0)
    return pid


def pubsub(endpoint, seconds):
    async def publisher():
        async with await bus.connect(endpoint) as b:
            while True:
                for _ in range(1000):
                    b.publish_nowait("bench.x", PAYLOAD)
                await b._link.wait_below_high_water()
                await asyncio.sleep(0)

    async def subscriber():
        async with await bus.connect(endpoint) as b:
            sub = b.subscribe("bench.x")
            await b.flush()
            pid = child(publisher)
            try:
                await sub.next(10)
                count = 0
                start = time.perf_counter()
                end = start + seconds
                async for _ in sub:
                    count += 1
                    if count & 0xFF == 0 and time.perf_counter() > end:
                        break
                return count / (time.perf_counter() - start)
            finally:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    return asyncio.run(subscriber())


def reqrep(endpoint, seconds):
    async def server():
        async with await bus.connect(endpoint) as b:
            b.serve("bench.echo", lambda r: r.payload)
            await b.flush()
            await asyncio.sleep(3600)

    async def requester():
        async with await bus.connect(endpoint) as b:
            pid = child(server)
            try:
                while True:  # until the service is in place
                    try:
                        await b.request("bench.echo", PAYLOAD)
                        break
                    except bus.BusError as e:
                        if e.code != "no_responders":
                            raise
                        await asyncio.sleep(0.01)
                count = 0
                start = time.perf_counter()
                end = start + seconds
                while True:
                    await b.request("bench.echo", PAYLOAD)
                    count += 1
                    if count & 0xFF == 0 and time.perf_counter() > end:
                        break
                return count / (time.perf_counter() - start)
            finally:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    return asyncio.run(requester())


# --- harness -------------------------------------------------------------------------------

def start_busd(path, tmp):
    run = os.path.join(tmp, "run")
    os.mkdir(run, 0o700)
    sock = os.path.join(run, "busd.sock")
    p = subprocess.Popen([path, "-e", "unix://" + sock], stdout=subprocess.DEVNULL,
                         env={**os.environ, "XDG_RUNTIME_DIR": tmp})
    for _ in range(500):
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(sock)
                return p, "unix://" + sock
            except OSError:
                time.sleep(0.01)
    p.kill()
    sys.exit("python_bench: busd did not start")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busd", required=True)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        busd, endpoint = start_busd(args.busd, tmp)
        try:
            cases = [("pubsub.64B", lambda: pubsub(endpoint, args.seconds), "read_split",
                      lambda: read_split(args.seconds)),
                     ("req.serial", lambda: reqrep(endpoint, args.seconds), "pingpong",
                      lambda: pingpong(args.seconds))]
            only = [o for o in args.only.split(",") if o]
            cases = [c for c in cases if not only or any(o in c[0] for o in only)]
            rows = []
            parse_rate = statistics.median(read_split(args.seconds, parse=True)
                                           for _ in range(args.rounds))
            for name, run, limit_name, limit in cases:
                measured, limits = [], []
                for _ in range(args.rounds):
                    measured.append(run())
                    limits.append(limit())
                rows.append((name, statistics.median(measured), limit_name,
                             statistics.median(limits)))
        finally:
            busd.terminate()
            busd.wait()
    print(f"python {sys.version.split()[0]}, protobuf "
          f"{__import__('google.protobuf').protobuf.__version__} "
          f"({__import__('google.protobuf.internal.api_implementation', fromlist=['x']).Type()})")
    print(f"{'case':<12}{'rate/s':>12}  {'limit':<11}{'rate/s':>12}  {'ratio':>6}")
    print("-" * 57)
    failed = False
    for name, rate, limit_name, limit in rows:
        ratio = rate / limit
        print(f"{name:<12}{rate:>12,.0f}  {limit_name:<11}{limit:>12,.0f}  {ratio:>6.2f}")
    print(f"{'':<12}{'':>12}  {'read_parse':<11}{parse_rate:>12,.0f}")
    for name, rate, limit_name, limit in rows:
        ok = rate / limit >= BAR
        failed |= not ok
        print(f"bar: python {name} >= {BAR} x {limit_name}: {'PASS' if ok else 'FAIL'} "
              f"({rate / limit:.2f})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
