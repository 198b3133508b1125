"""File descriptors with messages over unix://, to and from a C++ client (python_fd_peer):
in requests, replies and direct messages; the sender keeps its own copies."""

import os

import pytest

import bus
from conftest import read_line, run


@pytest.fixture
def peer(busd):
    p = busd.program("PYTHON_FD_PEER", busd.endpoint)
    assert read_line(p) == "ready\n"
    return p


def read_all(fd):
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_python_sends_an_fd_cpp_reads_it(busd, peer):
    async def main():
        async with await bus.connect() as b:
            r, w = os.pipe()
            os.write(w, b"through a pipe from python")
            os.close(w)
            reply = await b.request("fd.read", fds=[r])
            os.close(r)  # ours stayed ours: the peer got a duplicate
            assert reply.payload == b"through a pipe from python"
    run(main())


def test_cpp_writes_into_an_fd_python_sent(busd, peer):
    async def main():
        async with await bus.connect() as b:
            r, w = os.pipe()
            assert (await b.request("fd.write", fds=[w])).payload == b"ok"
            os.close(w)
            assert read_all(r) == b"written by c++"
            os.close(r)
    run(main())


def test_python_receives_an_fd_from_cpp(busd, peer):
    async def main():
        async with await bus.connect() as b:
            reply = await b.request("fd.give")
            assert reply.payload == b"pipe" and len(reply.fds) == 1
            [fd] = reply.fds
            assert read_all(fd) == b"hello from c++"
            reply.close_fds()
    run(main())


def test_direct_messages_carry_fds_both_ways(busd, peer):
    async def main():
        async with await bus.connect() as b:
            clients = await b.sys("clients")
            [cpp] = [c.id for c in clients.clients if c.name == "python-fd-peer"]
            back = b.direct_messages()
            files = [os.pipe() for _ in range(3)]
            for i, (r, w) in enumerate(files):
                os.write(w, b"pipe %d" % i)
                os.close(w)
            assert b.send_to(cpp, "three pipes", fds=[r for r, _ in files])
            assert b.send_to(cpp, "none")
            m = await back.next(5)
            assert (m.text, m.source, len(m.fds)) == ("three pipes", cpp, 3)
            assert [read_all(fd) for fd in m.fds] == [b"pipe 0", b"pipe 1", b"pipe 2"]
            m.close_fds()
            m = await back.next(5)
            assert (m.text, m.fds) == ("none", ())
            for r, _ in files:
                os.close(r)
    run(main())


def test_a_publish_with_fds_is_refused_by_busd(busd):
    # fds travel to one receiver only (docs/protocol.md): busd answers fds_not_supported.
    async def main():
        async with await bus.connect() as b:
            events = []
            b.on_event(events.append)
            r, w = os.pipe()
            b._send(bus._wire.frame(bus._wire.header(bus._wire.KIND_PUBLISH, b"x", fd_count=1)),
                    [r])
            await b.flush()
            os.close(r)
            os.close(w)
            assert [e.error.code for e in events if e.kind == "error"] == ["fds_not_supported"]
    run(main())
