"""busd killed with SIGKILL and started again: calls in flight fail with broker_unavailable,
requests fail at once while it is away, and the client comes back by itself to the new busd
(a new broker id) with its subscriptions and services."""

import asyncio

import pytest

import bus
from conftest import run, served, subscribed, until


def test_resubscribes_and_serves_again_after_busd_restarts(busd):
    async def main():
        async with await bus.connect(name="survivor") as b:
            events = []
            b.on_event(events.append)
            s = b.subscribe("after.*")
            b.serve("still.here", lambda r: b"yes")
            b.serve("slow", lambda r: None)  # never answers: in flight when busd dies
            await b.flush()
            first_broker = (await b.sys("stats")).broker_id
            pending = asyncio.ensure_future(b.request("slow", timeout=30))
            await asyncio.sleep(0.1)

            busd.kill()
            with pytest.raises(bus.BusError) as e:
                await pending
            assert e.value.code == "broker_unavailable"
            await until("the client to see busd gone", lambda: _true(not b.connected))
            with pytest.raises(bus.BusError) as e:  # at once, without being sent
                await b.request("still.here", timeout=30)
            assert e.value.code == "broker_unavailable"
            assert await b.publish("after.lost", "nobody") is False

            busd.start()
            await until("the client back", lambda: _true(b.connected))
            assert (await b.sys("stats")).broker_id != first_broker
            await until("its subscription at the new busd", lambda: subscribed(b, "after.*"))
            async with await bus.connect() as other:
                await until("its service", lambda: served(other, "still.here"))
                assert (await other.request("still.here")).payload == b"yes"
                await other.publish("after.restart", "hello again")
            m = await s.next(5)
            assert m.subject == "after.restart"
            kinds = [e.kind for e in events]
            assert "connected" in kinds[kinds.index("disconnected"):]
            assert any(e.kind == "error" and e.dropped == 1 for e in events)  # the lost publish
    run(main(), timeout=60)


async def _true(value):
    return value


def test_connect_with_nobody_listening_is_broker_unavailable(tmp_path):
    async def main():
        with pytest.raises(bus.BusError) as e:
            await bus.connect(f"unix://{tmp_path}/nobody.sock")
        assert e.value.code == "broker_unavailable"
        assert "nobody.sock" in str(e.value)
    run(main())


def test_zeromq_endpoints_are_refused_with_a_reason():
    async def main():
        for endpoint in ("ipc:///tmp/x.zmq", "tcp://127.0.0.1:1", "nonsense"):
            with pytest.raises(bus.BusError) as e:
                await bus.connect(endpoint)
            assert e.value.code == "bad_endpoint"
    run(main())
