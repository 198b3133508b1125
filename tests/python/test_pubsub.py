"""Publish / subscribe through a real busd: wildcards, queue groups, headers, unsubscribe,
and the C++ side (the bus CLI) on either end."""

import asyncio

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
