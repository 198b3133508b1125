"""Blocking calls for scripts: the asyncio client run on a private event loop, which runs only
while a call of this module runs (as the C++ client's *_wait conveniences run its io_context).
Between calls nothing is read: what busd routes here waits in the socket (and busd drops it
for this client alone when its queue is full); a program that serves must call run().

    import bus.sync
    with bus.sync.connect() as b:
        b.publish("greet", "hello")
        reply = b.request("prices.quote", query, timeout=2)
        for m in b.subscribe("orders.*", timeout=10):
            print(m.subject, m.payload)
"""

import asyncio

from . import client as _client
from .errors import BusError


def connect(endpoint=None, **options):
    """bus.connect() with the same options, blocking: a connected sync Client."""
    loop = asyncio.new_event_loop()
    try:
        inner = loop.run_until_complete(_client.connect(endpoint, **options))
    except BaseException:
        loop.close()
        raise
    return Client(loop, inner)


class Client:
    def __init__(self, loop, inner):
        self._loop = loop
        self.aio = inner  # the asyncio client underneath

    def _run(self, coro):
        if self._loop.is_closed():
            coro.close()
            raise BusError("channel_closed")
        return self._loop.run_until_complete(coro)

    @property
    def id(self):
        return self.aio.id

    def publish(self, subject, message=b"", *, headers=None):
        return self._run(self.aio.publish(subject, message, headers=headers))

    def request(self, service, message=b"", *, timeout=5.0, headers=None, fds=None):
        return self._run(self.aio.request(service, message, timeout=timeout, headers=headers,
                                          fds=fds))

    def send_to(self, client_id, message=b"", *, fds=None):
        ok = self.aio.send_to(client_id, message, fds=fds)
        self._run(asyncio.sleep(0))  # writes it
        return ok

    def subscribe(self, pattern, *, queue="", type=None, timeout=None, max_pending=65536):
        """An iterator of the messages on ``pattern``; with ``timeout``, each next() waits at
        most that long and raises BusError timeout. In place at busd once the first next()
        runs, or after flush()."""
        return Subscription(self, self.aio.subscribe(pattern, queue=queue, type=type,
                                                     max_pending=max_pending), timeout)

    def serve(self, service, handler):
        """As bus.Client.serve; the handler runs while run() (or another call) runs."""
        self.aio.serve(service, handler)

    def unserve(self, service):
        self.aio.unserve(service)

    def run(self, seconds=None):
        """Runs the client (serving, delivering to callbacks) for ``seconds``, or until
        closed."""
        async def wait():
            if seconds is None:
                while not self.aio.closed:
                    await asyncio.sleep(0.1)
            else:
                await asyncio.sleep(seconds)
        self._run(wait())

    def message_class(self, full_name, timeout=5.0):
        return self._run(self.aio.message_class(full_name, timeout))

    def decode(self, message):
        return self._run(self.aio.decode(message))

    def sys(self, what, timeout=5.0):
        return self._run(self.aio.sys(what, timeout))

    def flush(self, timeout=5.0):
        self._run(self.aio.flush(timeout))

    def drain(self, timeout=5.0):
        try:
            self._run(self.aio.drain(timeout))
        finally:
            self._loop.close()

    def close(self):
        if self._loop.is_closed():
            return
        try:
            self._run(self.aio.close())
        finally:
            self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Subscription:
    def __init__(self, client, inner, timeout):
        self._client = client
        self.aio = inner
        self._timeout = timeout

    @property
    def dropped(self):
        return self.aio.dropped

    def next(self, timeout=None):
        """The next message; BusError timeout, or channel_closed once it ended."""
        if self.aio._pending:  # also after the client closed
            return self.aio._pending.popleft()
        if self.aio._ended:
            raise BusError("channel_closed", f"the subscription to {self.aio.pattern} ended")
        return self._client._run(self.aio.next(timeout if timeout is not None else
                                               self._timeout))

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self.next()
        except BusError as e:
            if e.code == "channel_closed":
                raise StopIteration from None
            raise

    def unsubscribe(self):
        self.aio.unsubscribe()
        self._client._run(asyncio.sleep(0))
