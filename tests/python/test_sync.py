"""The blocking API (bus.sync) for scripts, against a real busd and the bus CLI."""

import threading
import time

import pytest

import bus
import bus.sync
from conftest import json_lines


def test_publish_subscribe_request_blocking(busd):
    with bus.sync.connect() as b, bus.sync.connect() as server:
        sub = b.subscribe("sync.*", timeout=5)
        b.flush()
        server.serve("sync.echo", lambda req: b"echo " + req.payload)
        server.flush()
        b.publish("sync.one", "1")
        b.publish("sync.two", "2")
        assert [next(sub).text, next(sub).text] == ["1", "2"]
        with pytest.raises(bus.BusError) as e:
            sub.next(0.2)
        assert e.value.code == "timeout"

        # The server's handler runs while it runs; the request waits in another thread.
        result = {}
        t = threading.Thread(target=lambda: result.update(r=b.request("sync.echo", "x")))
        t.start()
        end = time.monotonic() + 20
        while t.is_alive() and time.monotonic() < end:
            server.run(0.05)
        t.join(10)
        assert result["r"].payload == b"echo x"

        with pytest.raises(bus.BusError) as e:
            b.request("sync.nobody")
        assert e.value.code == "no_responders"
        assert b.sys("stats").clients == 2


def test_a_script_publishes_and_exits_without_losing_it(busd):
    sub = busd.cli_background("sub", "--json", "--count", "3", "script.out")
    with bus.sync.connect() as b:
        end = time.monotonic() + 20
        while not any(s.pattern == "script.out" for s in b.sys("subscriptions").subscriptions):
            assert time.monotonic() < end, "bus sub did not subscribe"
            b.run(0.05)
        for i in range(3):
            b.publish("script.out", str(i))
    out, _ = sub.communicate(timeout=10)
    assert [line["payload_text"] for line in json_lines(out.decode())] == ["0", "1", "2"]


def test_iteration_ends_when_the_client_drains(busd):
    b = bus.sync.connect()
    sub = b.subscribe("x")
    b.flush()
    b.publish("x", "last")
    b.flush()
    b.drain()
    assert [m.text for m in sub] == ["last"]
    b.close()  # closing twice is harmless
