"""The asyncio client of bus: publish / subscribe, request / serve, direct messages, over
busd's unix:// protocol (docs/protocol.md). It mirrors the C++ bus::Client
(bus/include/bus/client.hpp):

- a request completes exactly once: its reply, or a BusError (no_responders, timeout,
  service_lost, expired, broker_unavailable, request_failed, channel_closed...); its deadline
  (deadline_unix_ns) is set from its timeout, so busd never hands a service a request its
  requester gave up on;
- the link's state is never a guess: when busd goes away every call in flight fails with
  broker_unavailable, and so does every request until a broker answers again, at once and
  without being sent; the client reconnects by itself (with backoff) and introduces itself
  again, with its subscriptions, services and types, on every new connection;
- publishes are not acknowledged; a publish while no broker is connected is not queued
  (publish returns False and an ``error`` event counts them).
"""

import asyncio
import collections
import inspect
import os
import socket
import stat
import time

from . import _wire
from ._link import Link
from .errors import BusError, error_from_wire, wire_name
from .types import TypePool, descriptor_set, generated_class, type_url
from .v1 import broker_pb2

__all__ = ["connect", "Client", "Message", "Request", "Subscription", "ClientEvent",
           "default_endpoint"]



# --- endpoints ------------------------------------------------------------------------------

def runtime_dir():
    """$XDG_RUNTIME_DIR/bus, else /tmp/bus-$UID, mode 0700 and ours (bus::runtime_dir)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    path = os.path.join(xdg, "bus") if xdg else f"/tmp/bus-{os.getuid()}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    # Refuse a directory someone else made or opened up: the sockets in it would be theirs.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path} is not a directory only this user can enter")
    return path


def default_endpoint():
    """What the C++ client connects to by default: BUS_ENDPOINT, else the user's busd over
    unix:// (bus/src/core/endpoint.cpp)."""
    return os.environ.get("BUS_ENDPOINT") or f"unix://{runtime_dir()}/busd.sock"


def socket_path(endpoint):
    scheme, sep, address = endpoint.partition("://")
    if not sep or not address or "\0" in address:
        raise BusError("bad_endpoint", endpoint)
    if scheme != "unix":
        raise BusError("bad_endpoint", f"{endpoint}: ipc:// and tcp:// are ZeroMQ, which the "
                                       "Python client does not speak; use busd's unix:// socket")
    return address


# --- messages -------------------------------------------------------------------------------

def _text(b):
    return b.decode("utf-8", "surrogateescape")


class Message:
    """A message as received. ``payload`` is bytes; ``value`` is the decoded protobuf message
    on a typed subscription. ``fds`` are file descriptors that came with it (ints): they are
    the receiver's to close."""

    __slots__ = ("envelope", "fds", "value", "error")

    def __init__(self, envelope, fds=()):
        self.envelope = envelope
        self.fds = fds
        self.value = None
        self.error = None

    kind = property(lambda self: self.envelope.kind)
    kind_name = property(lambda self: _wire.KIND_NAMES.get(self.envelope.kind, "unknown"))
    subject = property(lambda self: _text(self.envelope.subject))
    payload = property(lambda self: self.envelope.payload)
    type_url = property(lambda self: _text(self.envelope.type_url))
    source = property(lambda self: _text(self.envelope.source))
    id = property(lambda self: self.envelope.id)
    correlation_id = property(lambda self: self.envelope.correlation_id)
    subscription_id = property(lambda self: self.envelope.subscription_id)
    deadline_unix_ns = property(lambda self: self.envelope.deadline_unix_ns)
    monitored_kind = property(lambda self: self.envelope.monitored_kind)

    @property
    def type_name(self):
        """The payload's protobuf type (``shop.v1.Order``), or "" for raw bytes."""
        url = self.type_url
        return url[url.rfind("/") + 1:] if url else ""

    @property
    def text(self):
        return _text(self.envelope.payload)

    @property
    def headers(self):
        return [(_text(h.key), _text(h.value)) for h in self.envelope.headers]

    def header(self, key, default=None):
        key = _wire.as_bytes(key)
        for h in self.envelope.headers:
            if h.key == key:
                return _text(h.value)
        return default

    def decode(self, cls):
        """The payload as an instance of ``cls``; BusError wrong_type when it is not one."""
        if self.type_name and self.type_name != cls.DESCRIPTOR.full_name:
            raise BusError("wrong_type", f"{self.type_name}, not {cls.DESCRIPTOR.full_name}")
        value = cls()
        try:
            value.ParseFromString(self.envelope.payload)
        except Exception as e:
            raise BusError("wrong_type", f"does not parse as {cls.DESCRIPTOR.full_name}") from e
        return value

    def close_fds(self):
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = ()

    def __repr__(self):
        return (f"Message({self.kind_name} {self.subject!r} from {self.source!r}, "
                f"{self.type_name or 'bytes'}, {len(self.payload)} bytes"
                f"{f', {len(self.fds)} fds' if self.fds else ''})")


class Request(Message):
    """A request a serve() handler got: answer it once with reply() or fail(), or return the
    reply from the handler (or raise BusError / any exception: the requester gets a
    request_failed)."""

    __slots__ = ("_client", "_done")

    def __init__(self, envelope, fds, client):
        super().__init__(envelope, fds)
        self._client = client
        self._done = False

    @property
    def requester(self):
        return self.source

    @property
    def answered(self):
        return self._done

    def reply(self, message=b"", *, fds=None, headers=None):
        if self._done:
            return False
        self._done = True
        return self._client._respond(self.id, _wire.KIND_REPLY, b"", message, fds, headers)

    def fail(self, name, detail=""):
        """The requester gets BusError request_failed (or, for a name from bus's own table
        such as no_responders, that error) with ``name`` and ``detail``."""
        if self._done:
            return False
        self._done = True
        headers = [("detail", detail)] if detail else None
        return self._client._respond(self.id, _wire.KIND_ERROR, _wire.as_bytes(name), b"", None,
                                     headers)


class ClientEvent:
    """Something the client wants its user to know that is not a reply to a call:
    ``connected``, ``disconnected``, ``slow_consumer`` (``dropped`` messages lost by busd for
    us), ``error`` (busd refused something we sent: ``error`` is a BusError; or ``dropped``
    messages could not be sent)."""

    __slots__ = ("kind", "dropped", "error", "detail")

    def __init__(self, kind, dropped=0, error=None, detail=""):
        self.kind, self.dropped, self.error, self.detail = kind, dropped, error, detail

    def __repr__(self):
        return f"ClientEvent({self.kind}, dropped={self.dropped}, error={self.error!r}, " \
               f"detail={self.detail!r})"


# --- subscriptions --------------------------------------------------------------------------

class Subscription:
    """What subscribe() returns: an async iterator of Messages (or, given a callback, the
    handle to unsubscribe). Messages wait here for the iterator up to ``max_pending``; beyond,
    the newest are dropped and counted in ``dropped`` (busd does the same for a client that
    does not read: the bound keeps a stalled consumer from growing the process)."""

    def __init__(self, client, sid, pattern, queue, callback, type_, max_pending,
                 monitor=False):
        self._client = client
        self.sid = sid
        self.pattern = pattern
        self.queue = queue
        self.monitor = monitor
        self._callback = callback
        self._type = type_
        self._max_pending = max_pending
        self._pending = collections.deque()
        self._waiter = None
        self._ended = False
        self.dropped = 0

    def _push(self, message):
        if self._type is not None:
            try:
                message.value = message.decode(self._type)
            except BusError as e:
                message.error = e
        if self._callback is not None:
            self._client._run_handler(self._callback, message)
            return
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            message.close_fds()
            return
        self._pending.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _end(self):
        self._ended = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self):
        return self

    async def __anext__(self):
        while not self._pending:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = self._client._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._pending.popleft()

    async def next(self, timeout=None):
        """The next message; BusError timeout after ``timeout`` seconds, channel_closed when
        the subscription ended."""
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except asyncio.TimeoutError:
            raise BusError("timeout", f"no message on {self.pattern} within {timeout} s") \
                from None
        except StopAsyncIteration:
            raise BusError("channel_closed", f"the subscription to {self.pattern} ended") \
                from None

    def unsubscribe(self):
        self._client._unsubscribe(self)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.unsubscribe()


# --- the client -----------------------------------------------------------------------------

async def connect(endpoint=None, *, name="", heartbeat=1.0, connect_timeout=2.0,
                  max_message_size=8 << 20, reconnect_min=0.05, reconnect_max=2.0,
                  linger=2.0):
    """Connects to busd (``endpoint``: unix://PATH; default: default_endpoint()) and waits for
    its welcome. BusError broker_unavailable when nobody listens there, or the link's own
    error (bad_frame, truncated_frame...) when what answers is not a busd."""
    endpoint = endpoint or default_endpoint()
    client = Client(endpoint, name=name, heartbeat=heartbeat, max_message_size=max_message_size,
                    reconnect_min=reconnect_min, reconnect_max=reconnect_max, linger=linger)
    await client._start(connect_timeout)
    return client


class Client:
    """Made by ``await bus.connect()``; use as ``async with``, which closes it at the end."""

    def __init__(self, endpoint, *, name="", heartbeat=1.0, max_message_size=8 << 20,
                 reconnect_min=0.05, reconnect_max=2.0, linger=2.0):
        self.endpoint = endpoint
        self._path = socket_path(endpoint)
        self.name = name
        self._heartbeat = heartbeat
        self._max_message_size = max_message_size
        self._reconnect = (reconnect_min, reconnect_max)
        self._linger = linger
        self._loop = asyncio.get_running_loop()
        self._link = None
        self.id = ""
        self._broker_id = ""
        self.connected = False
        self._unavailable = False  # known: no broker (until one answers again)
        self._closed = False
        self._next_id = 1
        self._calls = {}  # id -> (future, timer handle)
        self._subscriptions = {}  # sid -> Subscription
        self._services = {}  # name -> handler
        self._registered = set()  # type names registered on this connection
        self._types = TypePool()
        self._direct = None  # Subscription of direct messages
        self._on_event = None
        self._unsent = 0
        self._unsent_reported = 0.0
        self._heartbeat_handle = None
        self._reconnect_task = None
        self._welcomed = None  # future: the first welcome on a new link
        self._tasks = set()  # handler tasks running
        self._headers = {}  # (subject, type URL) -> a publish's encoded header

    # --- connection ----------------------------------------------------------------------

    async def _open_link(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await self._loop.sock_connect(sock, self._path)
        except OSError as e:
            sock.close()
            raise BusError("broker_unavailable",
                           f"no broker at {self.endpoint}: {e.strerror or e}") from None
        self._link = Link(self._loop, sock, self._max_message_size, self._on_frame,
                          self._on_link_closed)
        # A new connection is a new client to the broker, restarted or not.
        self._broker_id = ""
        self._registered.clear()
        self._unavailable = False
        self._send_control("hello", broker_pb2.Hello(name=self.name.encode()))
        self._register_everything()

    async def _start(self, timeout):
        self._welcomed = self._loop.create_future()
        await self._open_link()
        self._beat()
        try:
            await asyncio.wait_for(asyncio.shield(self._welcomed), timeout)
        except asyncio.TimeoutError:
            await self.close()
            raise BusError("timeout", f"no welcome from {self.endpoint} within {timeout} s") \
                from None
        except BusError:
            await self.close()
            raise

    def _on_link_closed(self, error):
        if self._welcomed is not None and not self._welcomed.done():
            self._welcomed.set_exception(error or BusError(
                "broker_unavailable", f"{self.endpoint} closed the connection before welcoming"))
            self._welcomed.exception()  # retrieved: no "never retrieved" warning if unused
        self._link_down(error)
        if not self._closed and self.connected_once:
            self._reconnect_task = self._loop.create_task(self._reconnect_loop())

    @property
    def connected_once(self):
        return bool(self.id)

    def _link_down(self, error):
        if self._closed or self._unavailable:
            return  # one event per outage
        self._unavailable = True
        self.connected = False
        detail = f"no broker at {self.endpoint}"
        if error is not None:
            detail += f": {error}"
        self._fail_calls(BusError("broker_unavailable", detail))
        self._emit(ClientEvent("disconnected", 0, BusError("broker_unavailable"), detail))

    async def _reconnect_loop(self):
        delay, limit = self._reconnect
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                await self._open_link()
                return
            except BusError:
                delay = min(delay * 2, limit)

    def _beat(self):
        if self._closed:
            return
        # No pings into a link known to be down.
        if self._link is not None and not self._link.closed:
            self._send_control("ping", None)
        self._report_unsent()
        self._heartbeat_handle = self._loop.call_later(self._heartbeat, self._beat)

    def on_event(self, handler):
        """``handler(ClientEvent)``: connected, disconnected, slow_consumer, error."""
        self._on_event = handler

    def _emit(self, event):
        if self._on_event is not None:
            self._on_event(event)

    # --- sending -------------------------------------------------------------------------

    def _frame(self, head, payload):
        """One frame; BusError message_too_large for one busd would not take (over unix://
        busd closes a connection that sends a frame over its max_message_size)."""
        if len(head) + len(payload) + 8 > self._max_message_size:
            raise BusError("message_too_large", f"{len(payload)} bytes of payload, over the "
                                                f"limit of {self._max_message_size}")
        return _wire.frame(head, payload)

    def _send(self, data, fds=None):
        """Queues a frame: False when there is no link."""
        link = self._link
        if self._closed or link is None or link.closed:
            return False
        link.send(data, fds)
        return True

    def _send_control(self, op, body, id=0, type_url=b""):
        payload = body.SerializeToString() if body is not None else b""
        return self._send(_wire.frame(_wire.header(_wire.KIND_CONTROL, op.encode(), type_url, id),
                                      payload))

    def _stage(self, message):
        """A payload and its type URL: bytes/str as they are, a protobuf message serialized
        (its type registered with busd first, once per connection)."""
        if isinstance(message, (bytes, bytearray, memoryview)):
            return bytes(message), b""
        if isinstance(message, str):
            return message.encode(), b""
        descriptor = message.DESCRIPTOR
        if descriptor.full_name not in self._registered:
            self.register_type(descriptor)
        return message.SerializeToString(), type_url(descriptor).encode()

    def register_type(self, type_):
        """Describes a protobuf type (a class, or its descriptor) to busd, so tools (`bus sub`)
        and other clients decode it. Done by itself for every type this client sends."""
        descriptor = getattr(type_, "DESCRIPTOR", type_)
        self._registered.add(descriptor.full_name)
        self._send_control("register_type", descriptor_set(descriptor), 0,
                           type_url(descriptor).encode())

    def _unsent_one(self):
        if self._closed:
            return
        self._unsent += 1
        # The first of a run at once, the rest at most once a heartbeat (as C++).
        if time.monotonic() - self._unsent_reported >= self._heartbeat:
            self._report_unsent()

    def _report_unsent(self):
        if not self._unsent:
            return
        self._unsent_reported = time.monotonic()
        dropped, self._unsent = self._unsent, 0
        self._emit(ClientEvent("error", dropped, BusError("broker_unavailable"),
                               f"not sent: no broker at {self.endpoint}"))

    async def publish(self, subject, message=b"", *, headers=None):
        """Publishes to every subscriber of ``subject``. ``message``: bytes, str or a protobuf
        message. ``headers``: a dict or (key, value) pairs. Waits while the link's queue is
        over its high-water mark (backpressure); False when no broker is connected (not
        queued, counted by an ``error`` event)."""
        link = self._link
        if link is None or link.closed or self._closed:
            self._unsent_one()
            return False
        payload, url = self._stage(message)
        if not link.send(self._frame(self._publish_header(subject, url, headers), payload)):
            await link.wait_below_high_water()
        return True

    def publish_nowait(self, subject, message=b"", *, headers=None):
        """publish() without waiting for room: True when queued below the high-water mark."""
        link = self._link
        if link is None or link.closed or self._closed:
            self._unsent_one()
            return False
        payload, url = self._stage(message)
        return link.send(self._frame(self._publish_header(subject, url, headers), payload))

    def _publish_header(self, subject, url, headers):
        if headers:
            return _wire.header(_wire.KIND_PUBLISH, _wire.as_bytes(subject), url,
                                headers=_pairs(headers))
        # A publisher sends to few subjects, many times: their headers are kept (a bounded
        # number of them), which saves a publish most of its encoding.
        key = (subject, url)
        head = self._headers.get(key)
        if head is None:
            if len(self._headers) >= 1024:
                self._headers.clear()
            head = self._headers[key] = _wire.header(_wire.KIND_PUBLISH,
                                                     _wire.as_bytes(subject), url)
        return head

    def send_to(self, client_id, message=b"", *, fds=None):
        """A direct message to one client, by the id busd gave it (Message.source). An id
        nobody has comes back as an ``error`` event (no_such_client)."""
        payload, url = self._stage(message)
        head = _wire.header(_wire.KIND_DIRECT, _wire.as_bytes(client_id), url,
                            id=self._take_id(), fd_count=len(fds) if fds else 0)
        if not self._send(self._frame(head, payload), fds):
            self._unsent_one()
            return False
        return True

    def _respond(self, id, kind, subject, message, fds, headers):
        payload, url = self._stage(message)
        head = _wire.header(kind, subject, url, correlation_id=id,
                            headers=_pairs(headers) if headers else (),
                            fd_count=len(fds) if fds else 0)
        if not self._send(self._frame(head, payload), fds):
            self._unsent_one()
            return False
        return True

    def _take_id(self):
        id = self._next_id
        self._next_id += 1
        return id

    # --- calls awaiting an answer ----------------------------------------------------------

    def _add_call(self, timeout, what):
        id = self._take_id()
        future = self._loop.create_future()
        handle = self._loop.call_later(timeout, self._time_out, id, what, timeout)
        self._calls[id] = (future, handle)
        return id, future

    def _time_out(self, id, what, timeout):
        call = self._calls.pop(id, None)
        if call is not None and not call[0].done():
            call[0].set_exception(BusError("timeout", f"{what}: no answer within {timeout} s"))

    def _complete(self, id, result=None, error=None):
        call = self._calls.pop(id, None)
        if call is None:
            return False  # already completed (timed out, then the reply came)
        future, handle = call
        handle.cancel()
        if not future.done():
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        return True

    def _fail_calls(self, error):
        calls, self._calls = self._calls, {}
        for future, handle in calls.values():
            handle.cancel()
            if not future.done():
                future.set_exception(BusError(error.code, error.detail))

    async def request(self, service, message=b"", *, timeout=5.0, headers=None, fds=None):
        """Calls ``service``: its reply (a Message), or BusError: no_responders, timeout,
        service_lost, expired, broker_unavailable, request_failed (the service's fail():
        ``name`` and ``detail``), channel_closed, forbidden, invalid_subject,
        message_too_large. A request that failed is never sent later."""
        if self._closed:
            raise BusError("channel_closed")
        if self._unavailable or self._link is None or self._link.closed:
            raise BusError("broker_unavailable", f"no broker at {self.endpoint}")
        payload, url = self._stage(message)
        id, future = self._add_call(timeout, f"request {service}")
        deadline = time.time_ns() + int(timeout * 1e9)
        head = _wire.header(_wire.KIND_REQUEST, _wire.as_bytes(service), url, id=id,
                            deadline_unix_ns=deadline,
                            headers=_pairs(headers) if headers else (),
                            fd_count=len(fds) if fds else 0)
        if not self._send(self._frame(head, payload), fds):
            self._complete(id, error=BusError("broker_unavailable"))
        return await future

    async def flush(self, timeout=5.0):
        """Returns once busd has processed everything sent before (a ping answered by its
        pong): after it, this client's subscriptions and services are in place."""
        if self._closed:
            raise BusError("channel_closed")
        if self._unavailable or self._link is None or self._link.closed:
            raise BusError("broker_unavailable", f"no broker at {self.endpoint}")
        id, future = self._add_call(timeout, "flush")
        if not self._send_control("ping", None, id):
            self._complete(id, error=BusError("broker_unavailable"))
        await future

    # --- subscriptions and services --------------------------------------------------------

    def subscribe(self, pattern, *, queue="", callback=None, type=None, max_pending=65536):
        """Subscribes to ``pattern`` (``*`` one token, ``>`` the rest); with ``queue``, each
        message goes to one member of the group. Returns a Subscription: ``async for m in
        sub``, or ``callback(message)`` (a coroutine function runs as a task). ``type``: a
        protobuf class each message is decoded into (``m.value``; ``m.error`` = wrong_type
        when it is not one). In place once busd processed it: ``await flush()``. A bad pattern
        comes back as an ``error`` event (invalid_subject)."""
        sid = self._take_id()
        sub = Subscription(self, sid, pattern, queue, callback, type, max_pending)
        self._subscriptions[sid] = sub
        self._send_subscribe(sub)
        return sub

    def monitor(self, pattern=">", *, callback=None, max_pending=65536):
        """A copy of everything busd routes whose subject matches (docs/protocol.md,
        Monitors); each message's ``monitored_kind`` says what it copies."""
        sid = self._take_id()
        sub = Subscription(self, sid, pattern, "", callback, None, max_pending, monitor=True)
        self._subscriptions[sid] = sub
        self._send_subscribe(sub)
        return sub

    def _send_subscribe(self, sub):
        body = broker_pb2.Subscribe(sid=sub.sid, pattern=sub.pattern.encode(),
                                    queue_group=sub.queue.encode())
        self._send_control("monitor" if sub.monitor else "sub", body)

    def _unsubscribe(self, sub):
        if self._subscriptions.pop(sub.sid, None) is None:
            return
        sub._end()
        self._send_control("unmonitor" if sub.monitor else "unsub",
                           broker_pb2.Unsubscribe(sid=sub.sid))

    def serve(self, service, handler):
        """Serves ``service`` (its requests are shared round-robin by every client that serves
        it); serving it again replaces the handler. ``handler(request)`` (plain or async)
        answers with request.reply() / fail(), or returns the reply (bytes, str, a protobuf
        message, or (message, fds)); an exception answers fail(): BusError with its name,
        anything else as "internal_error"."""
        replaced = service in self._services
        self._services[service] = handler
        if not replaced:
            self._send_control("serve", broker_pb2.Serve(service=service.encode()))

    def unserve(self, service):
        if self._services.pop(service, None) is not None:
            self._send_control("unserve", broker_pb2.Serve(service=service.encode()))

    def _register_everything(self):
        for sub in self._subscriptions.values():
            self._send_subscribe(sub)
        for name in self._services:
            self._send_control("serve", broker_pb2.Serve(service=name.encode()))

    def on_direct(self, callback):
        """``callback(message)`` for each direct message (send_to) this client gets."""
        self._direct_subscription()._callback = callback

    def direct_messages(self, max_pending=65536):
        """The direct messages this client gets, as an async iterator."""
        sub = self._direct_subscription()
        sub._max_pending = max_pending
        return sub

    def _direct_subscription(self):
        if self._direct is None:
            self._direct = Subscription(self, 0, "(direct)", "", None, None, 65536)
        return self._direct

    # --- receiving -----------------------------------------------------------------------

    def _on_frame(self, envelope, fds):
        kind = envelope.kind
        if kind == _wire.KIND_PUBLISH:
            sub = self._subscriptions.get(envelope.subscription_id)
            if sub is not None:
                return sub._push(Message(envelope, fds))
        elif kind == _wire.KIND_REPLY:
            if self._complete(envelope.correlation_id, Message(envelope, fds)):
                return
        elif kind == _wire.KIND_CONTROL:
            return self._on_control(envelope)
        elif kind == _wire.KIND_REQUEST:
            return self._on_request(envelope, fds)
        elif kind == _wire.KIND_ERROR:
            message = Message(envelope, fds)
            error = error_from_wire(message.subject, message.header("detail", ""), message)
            if not self._complete(envelope.correlation_id, error=error):
                self._emit(ClientEvent("error", 0, error, error.detail))
            return
        elif kind == _wire.KIND_DIRECT:
            if self._direct is not None:
                return self._direct._push(Message(envelope, fds))
        # Nobody takes it: its fds are closed here.
        for fd in fds:
            os.close(fd)

    def _on_control(self, envelope):
        op = envelope.subject
        if op in (b"welcome", b"pong"):
            welcome = broker_pb2.Welcome()
            try:
                welcome.ParseFromString(envelope.payload)
            except Exception:
                return
            restarted = bool(self._broker_id) and self._broker_id != welcome.broker_id
            self._broker_id = welcome.broker_id
            self.id = welcome.client_id
            self._unavailable = False
            if restarted:
                # A new broker knows nothing of us: introduce ourselves again.
                self._registered.clear()
                self._send_control("hello", broker_pb2.Hello(name=self.name.encode()))
                self._register_everything()
            if not self.connected or restarted:
                self.connected = True
                self._emit(ClientEvent("connected", 0, None, self.endpoint))
            if self._welcomed is not None and not self._welcomed.done():
                self._welcomed.set_result(None)
            if op == b"pong" and envelope.correlation_id:
                self._complete(envelope.correlation_id)
        elif op == b"slow_consumer":
            notice = broker_pb2.SlowConsumer()
            try:
                notice.ParseFromString(envelope.payload)
            except Exception:
                return
            self._emit(ClientEvent("slow_consumer", notice.dropped))
        # "ping": hearing it is all it is for.

    def _on_request(self, envelope, fds):
        request = Request(envelope, fds, self)
        handler = self._services.get(request.subject)
        if handler is None:
            request.fail(wire_name("no_responders"), "not served here any more")
            request.close_fds()
            return
        self._run_handler(handler, request, request)

    def _run_handler(self, handler, message, request=None):
        try:
            result = handler(message)
        except Exception as e:
            return self._handler_failed(request, e)
        if inspect.isawaitable(result):
            task = self._loop.create_task(self._await_handler(result, request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif request is not None and not request.answered and result is not None:
            self._answer(request, result)

    async def _await_handler(self, awaitable, request):
        try:
            result = await awaitable
        except asyncio.CancelledError:
            raise
        except Exception as e:
            return self._handler_failed(request, e)
        if request is not None and not request.answered and result is not None:
            self._answer(request, result)

    @staticmethod
    def _answer(request, result):
        if isinstance(result, tuple):
            request.reply(result[0], fds=result[1])
        else:
            request.reply(result)

    def _handler_failed(self, request, error):
        if request is None:
            # A subscriber's callback: reported as asyncio reports what a callback raised
            # (the loop's exception handler; by default, the logging module).
            self._loop.call_exception_handler({
                "message": "bus: a subscription callback raised", "exception": error})
            return
        if request.answered:
            return
        if isinstance(error, BusError):
            request.fail(error.name, error.detail)
        else:
            request.fail("internal_error", f"{type(error).__name__}: {error}")

    # --- types ---------------------------------------------------------------------------

    async def message_class(self, full_name, timeout=5.0):
        """The class of protobuf type ``full_name``: from an imported _pb2 module, else built
        from the FileDescriptorSet busd keeps for it ($sys.type; fetched once). BusError
        unknown_type when busd does not know the type either (as the Node client says)."""
        cls = generated_class(full_name) or self._types.find(full_name)
        if cls is None:
            try:
                reply = await self.request("$sys.type", full_name.encode(), timeout=timeout)
            except BusError as e:
                if e.code != "no_responders":
                    raise
                raise BusError("unknown_type", f"type {full_name} is not registered with busd "
                               "(see `bus ls types`) and no _pb2 module here defines it") from None
            try:
                self._types.add(reply.payload)
            except ValueError as e:
                raise BusError("bad_frame", f"$sys.type {full_name}: {e}") from None
            cls = self._types.find(full_name)
            if cls is None:
                raise BusError("wrong_type", f"busd's schema for {full_name} does not define it")
        return cls

    async def decode(self, message):
        """A typed message's payload, decoded (its class found by message_class())."""
        if not message.type_name:
            raise BusError("wrong_type", "the message has no type")
        return message.decode(await self.message_class(message.type_name))

    async def sys(self, what, timeout=5.0):
        """busd's own answers, decoded: clients, subscriptions, services, stats, queues,
        types."""
        cls = {"clients": broker_pb2.ClientList, "subscriptions": broker_pb2.SubscriptionList,
               "services": broker_pb2.ServiceList, "stats": broker_pb2.BrokerStats,
               "queues": broker_pb2.QueueList, "types": broker_pb2.TypeList}[what]
        reply = await self.request("$sys." + what, timeout=timeout)
        return cls.FromString(reply.payload)

    # --- ending --------------------------------------------------------------------------

    async def drain(self, timeout=5.0):
        """Ends the client without losing what is in flight: withdraws its subscriptions and
        services from busd, delivers what busd had already routed here, hands over what it
        queued, then closes. Iterators end after the messages they hold."""
        if self._closed:
            raise BusError("channel_closed")
        for sub in self._subscriptions.values():
            self._send_control("unmonitor" if sub.monitor else "unsub",
                               broker_pb2.Unsubscribe(sid=sub.sid))
        for name in self._services:
            self._send_control("unserve", broker_pb2.Serve(service=name.encode()))
        try:
            await self.flush(timeout)
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=timeout)
        finally:
            await self.close()

    async def close(self):
        """Hands over what is queued (up to ``linger`` seconds), fails the calls in flight with
        channel_closed, ends every subscription, closes."""
        if self._closed:
            return
        link = self._link
        if link is not None and not link.closed:
            await link.write_queued(self._linger)
        self._closed = True
        self.connected = False
        if self._heartbeat_handle is not None:
            self._heartbeat_handle.cancel()
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        if link is not None:
            link.close()
        self._fail_calls(BusError("channel_closed"))
        for sub in list(self._subscriptions.values()):
            sub._end()
        self._subscriptions.clear()
        if self._direct is not None:
            self._direct._end()

    @property
    def closed(self):
        return self._closed

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


def _pairs(headers):
    items = headers.items() if isinstance(headers, dict) else headers
    return [(_wire.as_bytes(k), _wire.as_bytes(v)) for k, v in items]
