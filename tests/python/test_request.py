"""Request / reply through a real busd, both ways with the C++ side (the bus CLI and a C++
test program), and each way a request can fail."""

import asyncio
import time

import pytest

import bus
from conftest import read_line, run, served, until


def test_python_serves_python(busd):
    async def main():
        async with await bus.connect() as server, await bus.connect() as client:
            async def upper(req):
                await asyncio.sleep(0)  # an async handler is awaited
                return req.payload.upper()
            server.serve("upper", upper)
            server.serve("explicit", lambda req: req.reply(b"r:" + req.payload + b" from "
                                                           + req.requester.encode()))
            await server.flush()
            assert (await client.request("upper", b"abc")).payload == b"ABC"
            reply = await client.request("explicit", "x")
            assert reply.text == f"r:x from {client.id}"
            assert reply.source == server.id
    run(main())


def test_python_calls_a_cpp_service_and_cpp_calls_python(busd):
    async def main():
        async with await bus.connect() as b:
            busd.cli_background("serve", "echo.cpp")
            await until("bus serve", lambda: served(b, "echo.cpp"))
            assert (await b.request("echo.cpp", b"round trip", timeout=5)).payload == \
                b"round trip"

            busd.cli_background("serve", "--fail", "out_of_stock", "fail.cpp")
            await until("bus serve --fail", lambda: served(b, "fail.cpp"))
            with pytest.raises(bus.BusError) as e:
                await b.request("fail.cpp", b"x")
            assert (e.value.code, e.value.name) == ("request_failed", "out_of_stock")

            b.serve("py.echo", lambda req: b"python says " + req.payload)
            b.serve("py.fail", lambda req: req.fail("no_stock", "none left"))
            await b.flush()
            r = await asyncio.to_thread(busd.cli, "req", "py.echo", "hi")
            assert r.stdout.decode().strip() == "python says hi"
            r = await asyncio.to_thread(busd.cli, "req", "py.fail", "hi", check=False)
            assert r.returncode == 7  # the service answered with an error
            assert "no_stock" in r.stderr.decode() and "none left" in r.stderr.decode()
    run(main())


def test_no_responders_at_once(busd):
    async def main():
        async with await bus.connect() as b:
            start = time.monotonic()
            with pytest.raises(bus.BusError) as e:
                await b.request("nobody.serves.this", b"", timeout=30)
            assert e.value.code == "no_responders"
            assert time.monotonic() - start < 30  # not by its deadline
    run(main(), timeout=60)


def test_timeout_when_the_service_never_answers(busd):
    async def main():
        async with await bus.connect() as server, await bus.connect() as client:
            seen = []
            server.serve("mute", lambda req: seen.append(req.deadline_unix_ns))
            await server.flush()
            before = time.time_ns()
            with pytest.raises(bus.BusError) as e:
                await client.request("mute", b"", timeout=0.3)
            assert e.value.code == "timeout"
            # The deadline the service saw is the requester's timeout from when it asked.
            [deadline] = seen
            assert before + 300_000_000 <= deadline <= time.time_ns() + 50_000_000
    run(main())


def test_expired_when_the_deadline_passed_before_busd_read_it(busd, monkeypatch):
    # A requester whose clock is 10 s behind busd's (a tcp:// host without NTP would be):
    # its deadline has passed when busd reads the request, which never reaches the service.
    async def main():
        async with await bus.connect() as server, await bus.connect() as client:
            seen = []
            server.serve("late", lambda req: seen.append(req) or b"ran")
            await server.flush()
            real = time.time_ns
            monkeypatch.setattr(time, "time_ns", lambda: real() - 10_000_000_000)
            with pytest.raises(bus.BusError) as e:
                await client.request("late", b"", timeout=5)
            monkeypatch.undo()
            assert e.value.code == "expired"
            await server.flush()
            assert seen == []
            stats = {s.name: s for s in (await client.sys("services")).services}
            assert stats["late"].expired == 1
    run(main())


def test_service_lost_when_the_instance_dies(busd):
    async def main():
        async with await bus.connect() as b:
            busd.program("CLI_TEST_PUBLISHER", busd.endpoint, "die", "dies")
            await until("the dying service", lambda: served(b, "dies"))
            with pytest.raises(bus.BusError) as e:
                await b.request("dies", b"", timeout=10)
            assert e.value.code == "service_lost"
    run(main())


def test_a_handler_that_raises_answers_with_an_error(busd):
    async def main():
        async with await bus.connect() as b:
            def broken(req):
                raise KeyError("sku")

            async def refuses(req):
                raise bus.BusError("request_failed", "not today", name="closed")
            b.serve("broken", broken)
            b.serve("refuses", refuses)
            await b.flush()
            with pytest.raises(bus.BusError) as e:
                await b.request("broken")
            assert (e.value.code, e.value.name) == ("request_failed", "internal_error")
            assert "KeyError" in e.value.detail
            with pytest.raises(bus.BusError) as e:
                await b.request("refuses")
            assert (e.value.name, e.value.detail) == ("closed", "not today")
    run(main())


def test_sys_requests(busd):
    async def main():
        async with await bus.connect(name="sys-test") as b:
            b.serve("svc", lambda r: b"")
            await b.flush()
            stats = await b.sys("stats")
            assert stats.clients == 1 and stats.broker_id
            clients = await b.sys("clients")
            assert [(c.id, c.name, c.transport) for c in clients.clients] == \
                [(b.id, "sys-test", "unix")]
            assert [s.name for s in (await b.sys("services")).services] == ["svc"]
    run(main())


def test_many_requests_in_flight_complete_each_once(busd):
    async def main():
        async with await bus.connect() as server, await bus.connect() as client:
            server.serve("n", lambda r: r.payload)
            await server.flush()
            replies = await asyncio.gather(*(client.request("n", str(i)) for i in range(500)))
            assert [r.text for r in replies] == [str(i) for i in range(500)]
    run(main())


def test_drain_finishes_what_was_routed_then_closes(busd):
    async def main():
        async with await bus.connect() as pub:
            b = await bus.connect()
            s = b.subscribe("d")
            await b.flush()
            for i in range(100):
                await pub.publish("d", str(i))
            await pub.flush()
            await b.drain()
            assert b.closed
            assert [m.text async for m in s] == [str(i) for i in range(100)]
    run(main())
