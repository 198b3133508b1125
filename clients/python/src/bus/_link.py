"""A unix:// link to busd on an asyncio loop: frames out and in, with file descriptors.

asyncio's transports cannot carry ancillary data, so the link drives the non-blocking socket
itself (loop.add_reader / add_writer, sendmsg / recvmsg_into), as the C++ Channel does:

- Sending: frames are appended to one buffer and written once per loop turn (or when the
  writer gets room again), so a burst of publishes costs one sendmsg. The fds of a frame ride
  SCM_RIGHTS on the sendmsg that carries the frame's first byte, and the next frame with fds
  starts a sendmsg of its own: the receiver can tell which frame they belong to. What a caller
  passes is duplicated when queued, so the caller keeps (and may close) its own.
- Receiving: the kernel ends a stream read at an skb that carried fds, so the fds of a read
  belong to the frames beginning in it; they wait in a FIFO and each frame takes the number
  its envelope claims (fd_count). A frame over the size limit, one that does not parse, fds
  no frame claims, more fds than a frame could carry, or a peer closing mid-frame fails the
  link with that error (bus::errc's names), closing every fd that arrived: nothing waits for
  bytes that will never come, and nothing is read past a frame that cannot be right.
"""

import array
import collections
import os
import socket

from . import _wire
from .errors import BusError

MAX_FDS_PER_MESSAGE = 253  # SCM_MAX_FD
MAX_RECEIVED_FDS = 2 * MAX_FDS_PER_MESSAGE
_READ_SIZE = 256 * 1024
_ANC_SIZE = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * 4)
_READS_PER_WAKEUP = 16
HIGH_WATER_MARK = 4 * 1024 * 1024


def _close_all(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Link:
    """One connected socket. ``on_frame(envelope, fds)`` gets each frame (the fds are then
    the callee's); ``on_close(error)`` once, with a BusError or None (the peer closed
    cleanly)."""

    def __init__(self, loop, sock, max_frame, on_frame, on_close):
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._max_frame = max_frame
        self._on_frame = on_frame
        self._on_close = on_close
        self.closed = False
        # Sending: bytes not yet written, and (absolute position of a frame, its fds).
        self._out = bytearray()
        self._written = 0  # bytes written since the start: the position of _out[0]
        self._fd_batches = collections.deque()
        self._flush_scheduled = False
        self._writer_added = False
        self._drained = None  # a future waiting for _out to fall below the high-water mark
        # Receiving.
        self._rbuf = bytearray(_READ_SIZE)
        self._rview = memoryview(self._rbuf)
        self._pending = []  # bytes of a frame not yet complete
        self._have = 0
        self._need = 4
        self._fds = collections.deque()
        sock.setblocking(False)
        loop.add_reader(self._fd, self._readable)

    # --- sending ---------------------------------------------------------------------------

    def send(self, data, fds=None):
        """Queues one frame. False when the link is closed; otherwise whether the queue is
        still below the high-water mark."""
        if self.closed:
            return False
        if fds:
            if len(fds) > MAX_FDS_PER_MESSAGE:
                raise ValueError(f"{len(fds)} fds in one message, over the limit of "
                                 f"{MAX_FDS_PER_MESSAGE}")
            dups = [os.dup(fd if isinstance(fd, int) else fd.fileno()) for fd in fds]
            self._fd_batches.append((self._written + len(self._out), dups))
        self._out += data
        if not self._flush_scheduled and not self._writer_added:
            # The first frame of a loop turn leaves at once (a request or reply waits for no
            # turn of the loop); what follows in the same turn goes out together at its end.
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)
            self.flush()
        return len(self._out) < HIGH_WATER_MARK

    def queued(self):
        return len(self._out)

    async def wait_below_high_water(self):
        while not self.closed and len(self._out) >= HIGH_WATER_MARK:
            if self._drained is None:
                self._drained = self._loop.create_future()
            await self._drained

    def _scheduled_flush(self):
        self._flush_scheduled = False
        self.flush()

    def flush(self):
        """Writes until done or EAGAIN; then waits for room if anything is left."""
        if self.closed:
            return
        try:
            self._write_some()
        except OSError as e:
            # From the loop, not from inside the send() of whoever called: fail() runs their
            # handlers.
            self._loop.call_soon(self.fail, BusError("broker_unavailable",
                                                     f"write: {e.strerror or e}"))
            return
        if self._out and not self._writer_added:
            self._writer_added = True
            self._loop.add_writer(self._fd, self._writable)
        elif not self._out and self._writer_added:
            self._writer_added = False
            self._loop.remove_writer(self._fd)
        if len(self._out) < HIGH_WATER_MARK:
            self._wake_drained()

    def _writable(self):
        self.flush()

    def _wake_drained(self):
        if self._drained is not None:
            if not self._drained.done():
                self._drained.set_result(None)
            self._drained = None

    def _write_some(self):
        out = self._out
        while out:
            limit = len(out)
            batch = None
            if self._fd_batches:
                position = self._fd_batches[0][0] - self._written
                if position == 0:
                    batch = self._fd_batches[0]
                    if len(self._fd_batches) > 1:
                        limit = self._fd_batches[1][0] - self._written
                else:
                    limit = position
            chunk = out if limit == len(out) else bytes(out[:limit])
            try:
                if batch:
                    n = self._sock.sendmsg(
                        [chunk], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", batch[1]))])
                else:
                    n = self._sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                return
            if batch:
                self._fd_batches.popleft()
                _close_all(batch[1])  # the kernel holds its own references now
            del out[:n]
            self._written += n

    async def write_queued(self, timeout):
        """Waits until everything queued is written, up to ``timeout`` seconds."""
        if self.closed or not self._out:
            return
        deadline = self._loop.time() + timeout
        while self._out and not self.closed and self._loop.time() < deadline:
            self.flush()
            if self._out:
                fut = self._loop.create_future()
                handle = self._loop.call_later(0.005, lambda: fut.done() or fut.set_result(None))
                await fut
                handle.cancel()

    # --- receiving -------------------------------------------------------------------------

    def _readable(self):
        for _ in range(_READS_PER_WAKEUP):
            if self.closed:
                return
            try:
                n, anc, flags, _ = self._sock.recvmsg_into(
                    [self._rbuf], _ANC_SIZE, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                return self.fail(BusError("broker_unavailable", f"read: {e.strerror or e}"))
            # Own every fd that arrived before looking at anything else: each error path
            # below closes them.
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                    self._fds.extend(fds)
            if flags & socket.MSG_CTRUNC:
                return self.fail(BusError("control_truncated"))
            if len(self._fds) > MAX_RECEIVED_FDS:
                return self.fail(BusError("too_many_fds"))
            if n == 0:
                if self._have:
                    return self.fail(BusError("truncated_frame",
                                              f"{self._have} bytes of a frame, then the end"))
                if self._fds:
                    return self.fail(BusError("unexpected_fds"))
                return self.fail(None)
            error = self._received(n)
            if error:
                return self.fail(error)
            # Every frame that began in this read has claimed its fds.
            if self._fds and not self._have:
                return self.fail(BusError("unexpected_fds"))
            if n < _READ_SIZE and not anc:
                return  # the socket is empty

    def _received(self, n):
        if self._pending:
            self._pending.append(bytes(self._rview[:n]))
            self._have += n
            if self._have < self._need:
                return None
            buf = b"".join(self._pending)
            self._pending = []
            self._have = 0
        else:
            buf = self._rview[:n]
        try:
            return self._frames(buf)
        finally:
            if isinstance(buf, memoryview):
                buf.release()

    def _frames(self, buf):
        """Hands every whole frame of ``buf`` on; keeps the rest for the next read."""
        size = len(buf)
        off = 0
        unpack = _wire.unpack_length
        max_frame = self._max_frame
        parse = _wire.Envelope.FromString
        while size - off >= 4:
            n = unpack(buf, off)[0]
            if n > max_frame:
                return BusError("frame_too_large", f"a frame of {n} bytes, over the limit of "
                                                   f"{max_frame}")
            end = off + 4 + n
            if end > size:
                break
            try:
                envelope = parse(buf[off + 4:end])
            except Exception:  # protobuf's DecodeError, or anything its parser raises
                return BusError("bad_frame")
            off = end
            count = envelope.fd_count
            fds = ()
            if count:
                if count > MAX_FDS_PER_MESSAGE:
                    return BusError("too_many_fds")
                if count > len(self._fds):
                    return BusError("fd_mismatch", f"the frame claims {count} fds, "
                                                   f"{len(self._fds)} arrived")
                fds = [self._fds.popleft() for _ in range(count)]
            self._on_frame(envelope, fds)
            if self.closed:
                return None
        if off < size:
            rest = bytes(buf[off:])
            self._pending = [rest]
            self._have = len(rest)
            self._need = 4 + unpack(rest, 0)[0] if len(rest) >= 4 else 4
        else:
            self._need = 4
        return None

    # --- closing ---------------------------------------------------------------------------

    def fail(self, error):
        """Closes the link and tells the owner why (None: the peer closed)."""
        if self.closed:
            return
        self.close()
        self._on_close(error)

    def close(self):
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._fd)
        if self._writer_added:
            self._loop.remove_writer(self._fd)
        for _, fds in self._fd_batches:
            _close_all(fds)
        self._fd_batches.clear()
        _close_all(self._fds)
        self._fds.clear()
        self._out.clear()
        self._pending = []
        self._sock.close()
        self._wake_drained()
