"""A Python member of tests/languages/together.test.js's bus: one role per run, one JSON line
per event on stdout, {"ready": true} once its subscriptions and services are in place at busd
(BUS_ENDPOINT names it).

    roles.py sub PATTERN [QUEUE]   each message decoded through busd's registry, in the CLI's
                                   JSON shape, or the error decoding it gave
    roles.py serve SERVICE         answers "py:" + the request upper-cased
"""

import asyncio
import json
import sys

from google.protobuf import json_format

import bus


def say(**event):
    print(json.dumps(event), flush=True)


async def subscriber(b, pattern, queue):
    sub = b.subscribe(pattern, queue=queue)
    await b.flush()
    say(ready=True)
    async for m in sub:
        try:
            value = await b.decode(m)
        except bus.BusError as e:
            say(subject=m.subject, error=e.code)
            continue
        # The CLI's shape (bus::to_json): names as in the .proto, every field.
        say(subject=m.subject, type=m.type_name,
            value=json_format.MessageToDict(value, preserving_proto_field_name=True,
                                            including_default_value_fields=True))


async def service(b, name):
    b.serve(name, lambda request: b"py:" + bytes(request.payload).upper())
    await b.flush()
    say(ready=True)
    await asyncio.Event().wait()


async def main(role, args):
    async with await bus.connect(name="together-py") as b:
        b.on_event(lambda event: say(event=event.kind))
        if role == "sub":
            await subscriber(b, args[0], args[1] if len(args) > 1 else "")
        elif role == "serve":
            await service(b, args[0])
        else:
            raise SystemExit(f"roles.py: unknown role {role}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
