"""Publish / subscribe through a real busd: wildcards, queue groups, headers, unsubscribe,
and the C++ side (the bus CLI) on either end."""

import asyncio

import pytest

import bus
from conftest import json_lines, run, subscribed, until


def test_wildcards_deliver_what_matches_and_nothing_else(busd):
    async def main():
        async with await bus.connect() as pub, await bus.connect() as sub:
            one = sub.subscribe("orders.*.created")
            rest = sub.subscribe("orders.>")
            await sub.flush()
            for subject in ("orders.eu.created", "orders.eu.paid", "orders.us.created.late",
                            "other.eu.created"):
                await pub.publish(subject, subject)
            await pub.flush()
            assert (await one.next(5)).subject == "orders.eu.created"
            got = [(await rest.next(5)).subject for _ in range(3)]
            assert got == ["orders.eu.created", "orders.eu.paid", "orders.us.created.late"]
            await sub.flush()  # anything else would have arrived by now
            await pub.publish("orders.eu.created", "marker")
            assert (await one.next(5)).text == "marker"
    run(main())


def test_queue_group_gives_each_message_to_one_member(busd):
    async def main():
        async with await bus.connect() as pub, await bus.connect() as a, \
                await bus.connect() as b:
            subs = [a.subscribe("jobs.new", queue="workers"), b.subscribe("jobs.new",
                                                                             queue="workers")]
            await a.flush()
            await b.flush()
            for i in range(20):
                await pub.publish("jobs.new", str(i))
            await pub.flush()
            got = []
            while len(got) < 20:
                for s in subs:
                    try:
                        got.append(int((await s.next(0.2)).text))
                    except bus.BusError as e:
                        assert e.code == "timeout"
            assert sorted(got) == list(range(20))  # each exactly once
            assert subs[0]._pending == subs[1]._pending  # both drained
    run(main())


def test_headers_and_source_arrive_as_sent(busd):
    async def main():
        async with await bus.connect(name="pub") as pub, await bus.connect() as sub:
            s = sub.subscribe("h")
            await sub.flush()
            await pub.publish("h", b"\x00\xff", headers={"trace": "abc", "k": b"v"})
            m = await s.next(5)
            assert m.payload == b"\x00\xff"
            assert m.headers == [("trace", "abc"), ("k", "v")]
            assert m.header("trace") == "abc" and m.header("nope") is None
            assert m.source == pub.id
            assert m.kind_name == "publish" and m.subscription_id == s.sid
    run(main())


def test_unsubscribe_ends_the_iterator_and_the_deliveries(busd):
    async def main():
        async with await bus.connect() as b:
            s = b.subscribe("x")
            other = b.subscribe("x")
            await b.flush()
            s.unsubscribe()
            await b.publish("x", "after")
            assert (await other.next(5)).text == "after"
            assert [m async for m in s] == []
    run(main())


def test_a_bad_pattern_is_an_error_event(busd):
    async def main():
        async with await bus.connect() as b:
            events = []
            b.on_event(events.append)
            b.subscribe("a..b")
            await b.flush()
            assert [e.error.code for e in events if e.kind == "error"] == ["invalid_subject"]
    run(main())


def test_cli_publishes_to_python_and_python_to_cli(busd):
    async def main():
        async with await bus.connect() as b:
            s = b.subscribe("from.cli")
            await b.flush()
            await asyncio.to_thread(busd.cli, "pub", "--header", "k=v", "from.cli", "hello")
            m = await s.next(5)
            assert (m.text, m.header("k")) == ("hello", "v")

            sub = busd.cli_background("sub", "--json", "--count", "1", "from.python")
            await until("bus sub to subscribe", lambda: subscribed(b, "from.python"))
            await b.publish("from.python", "hi there", headers={"a": "b"})
            out, _ = await asyncio.to_thread(sub.communicate, timeout=10)
            [line] = json_lines(out.decode())
            assert line["subject"] == "from.python"
            assert line["payload_text"] == "hi there"
            assert line["source"] == b.id
            assert line["headers"] == {"a": "b"}
    run(main())


def test_a_large_message_arrives_whole(busd):
    async def main():
        async with await bus.connect() as b:
            s = b.subscribe("big")
            await b.flush()
            await b.publish("big", b"x" * (1 << 20))  # 1 MiB: within busd's limit
            assert len((await s.next(5)).payload) == 1 << 20
    run(main())


def test_a_message_over_the_limit_is_refused_before_it_is_sent(busd):
    # busd closes a unix:// connection that sends a frame over its max_message_size (8 MiB by
    # default, the client's default too): the client refuses it first and stays connected.
    async def main():
        async with await bus.connect() as b:
            s = b.subscribe("big")
            await b.flush()
            with pytest.raises(bus.BusError) as e:
                await b.publish("big", b"x" * (8 << 20))
            assert e.value.code == "message_too_large"
            with pytest.raises(bus.BusError) as e:
                await b.request("big", b"x" * (8 << 20))
            assert e.value.code == "message_too_large"
            await b.publish("big", "still connected")
            assert (await s.next(5)).text == "still connected"
    run(main())


def test_a_callback_that_raises_is_reported_to_the_loop(busd):
    async def main():
        reported = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reported.append(ctx))
        async with await bus.connect() as b:
            def broken(m):
                raise ValueError(m.text)
            b.subscribe("cb", callback=broken)
            after = b.subscribe("cb")
            await b.flush()
            await b.publish("cb", "boom")
            assert (await after.next(5)).text == "boom"
            assert [str(ctx["exception"]) for ctx in reported] == ["boom"]
    run(main())
