"""bus: the Python client of the bus message broker (busd), over its unix:// protocol.

    import bus
    async with await bus.connect() as b:
        await b.publish("greet", b"hello")

``bus.sync`` has the same calls, blocking, for scripts. docs/protocol.md is the wire
protocol; clients/python/README.md is this package's guide.
"""

from .client import (Client, ClientEvent, Message, Request, Subscription, connect,
                     default_endpoint)
from .errors import BusError
from . import sync

__all__ = ["connect", "Client", "ClientEvent", "Message", "Request", "Subscription",
           "BusError", "default_endpoint", "sync"]
