"""What answers on the socket is not a well-behaved busd: garbage, a close in the middle of a
frame, a length over the limit, fds no frame claims. The client fails with a clear error
(bus::errc's name), closes every fd that arrived, and nothing hangs."""

import array
import asyncio
import os
import socket
import threading

import pytest

import bus
from bus import _wire
from bus.v1 import broker_pb2
from conftest import run


def frame_of(envelope):
    body = envelope.SerializeToString()
    return _wire.pack_length(len(body)) + body


WELCOME = frame_of(_wire.Envelope(kind=_wire.KIND_CONTROL, subject=b"welcome",
                                  payload=broker_pb2.Welcome(client_id="c1", broker_id="fake")
                                  .SerializeToString()))


PING = frame_of(_wire.Envelope(kind=_wire.KIND_CONTROL, subject=b"ping"))


class FakeBusd:
    """A unix socket server that accepts one client and plays ``script(conn)``."""

    def __init__(self, path, script):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(script,), daemon=True)
        self.thread.start()

    def _serve(self, script):
        conn, _ = self.listener.accept()
        with conn:
            script(conn)
            self.done.wait(10)  # keep the connection until the test has seen the outcome

    @property
    def endpoint(self):
        return "unix://" + self.path

    def close(self):
        if self.done.is_set():
            return
        self.done.set()
        self.thread.join(10)
        self.listener.close()


@pytest.fixture
def fake(tmp_path):
    servers = []

    def start(script):
        servers.append(FakeBusd(str(tmp_path / "fake.sock"), script))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


def open_fds():
    return set(os.listdir("/proc/self/fd"))


def pipes_with(conn, data, count):
    """Sends ``data`` with ``count`` fds (pipe ends) on one sendmsg."""
    ends = [os.pipe() for _ in range(count)]
    fds = [r for r, _ in ends]
    conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    for r, w in ends:
        os.close(r)
        os.close(w)


CASES = {
    "bad_frame": lambda c: c.sendall(_wire.pack_length(3) + b"\xff\xff\xff"),
    "truncated_frame": lambda c: (c.sendall(_wire.pack_length(100) + b"x" * 10),
                                  c.shutdown(socket.SHUT_WR)),
    "frame_too_large": lambda c: c.sendall(_wire.pack_length(0xFFFFFFF0)),
    "unexpected_fds": lambda c: pipes_with(c, PING, 2),
    "fd_mismatch": lambda c: c.sendall(frame_of(_wire.Envelope(kind=_wire.KIND_CONTROL,
                                                               subject=b"welcome",
                                                               fd_count=2))),
    "broker_unavailable": lambda c: c.close(),
}


@pytest.mark.parametrize("code", CASES)
def test_connect_fails_with_the_reason(fake, code):
    before = open_fds()
    server = fake(CASES[code])

    async def main():
        with pytest.raises(bus.BusError) as e:
            await bus.connect(server.endpoint, connect_timeout=10)
        return e.value
    error = run(main())
    assert error.code == code, error
    server.close()
    assert open_fds() <= before  # every fd that arrived was closed, and the socket too


def test_garbage_after_the_welcome_fails_calls_in_flight(fake):
    ready = threading.Event()

    def script(conn):
        conn.sendall(WELCOME)
        ready.wait(10)
        conn.sendall(b"\x05\x00\x00\x00garbage")

    endpoint = fake(script).endpoint

    async def main():
        b = await bus.connect(endpoint, reconnect_min=60)
        events = []
        b.on_event(events.append)
        pending = asyncio.ensure_future(b.request("anything", timeout=30))
        await asyncio.sleep(0)  # sent: in flight
        ready.set()
        with pytest.raises(bus.BusError) as e:
            await pending
        assert e.value.code == "broker_unavailable"
        assert "frame does not hold a valid envelope" in e.value.detail
        assert [ev.kind for ev in events] == ["disconnected"]
        await b.close()
    run(main())


def test_frames_over_the_clients_limit_are_refused_before_they_are_read(fake):
    ready = threading.Event()

    def script(conn):
        conn.sendall(WELCOME)
        ready.wait(10)
        conn.sendall(_wire.pack_length(4096) + b"x" * 100)

    endpoint = fake(script).endpoint

    async def main():
        b = await bus.connect(endpoint, max_message_size=1024, reconnect_min=60)
        events = []
        b.on_event(events.append)
        ready.set()
        while not events:
            await asyncio.sleep(0.01)
        assert events[0].kind == "disconnected"
        assert "frame longer than the limit" in events[0].detail
        await b.close()
    run(main())

