"""The frames of docs/protocol.md: ``u32 length (LE)`` + a serialized bus.v1.Envelope, its
payload field written last (as the C++ client writes it; busd reads the header before it and
copies the payload bytes on untouched).

Encoding is by hand: an Envelope's fields are a handful of varints and byte strings, and
writing them here costs a publish a fraction of building a protobuf message and serializing
it. Decoding goes through protobuf's own parser (the C++ implementation behind Debian's
python3-protobuf), which reads a whole Envelope faster than Python code could walk it.
"""

import struct

from .v1 import envelope_pb2

Envelope = envelope_pb2.Envelope

KIND_DATA = 1
KIND_PUBLISH = 2
KIND_REQUEST = 3
KIND_REPLY = 4
KIND_DIRECT = 5
KIND_ERROR = 6
KIND_CONTROL = 7
KIND_EVENT = 8

KIND_NAMES = {
    0: "unspecified", 1: "data", 2: "publish", 3: "request", 4: "reply", 5: "direct",
    6: "error", 7: "control", 8: "event",
}

TYPE_URL_PREFIX = "type.googleapis.com/"

_len = struct.Struct("<I")
pack_length = _len.pack
unpack_length = _len.unpack_from

# One-byte varints, the common case for tags, kinds and short lengths.
_SMALL = [bytes([i]) for i in range(128)]


def varint(n):
    if n < 128:
        return _SMALL[n] if n >= 0 else varint(n & 0xFFFFFFFFFFFFFFFF)
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag, value):
    return tag + varint(len(value)) + value


def header(kind, subject=b"", type_url=b"", id=0, correlation_id=0, deadline_unix_ns=0,
           headers=(), fd_count=0):
    """An Envelope's fields without the payload, serialized."""
    parts = [b"\x08", _SMALL[kind]]
    if subject:
        parts.append(_field(b"\x12", subject))
    if type_url:
        parts.append(_field(b"\x1a", type_url))
    if id:
        parts += (b"\x28", varint(id))
    if correlation_id:
        parts += (b"\x30", varint(correlation_id))
    if deadline_unix_ns:
        parts += (b"\x48", varint(deadline_unix_ns))
    for key, value in headers:
        h = _field(b"\x0a", key) + _field(b"\x12", value)
        parts.append(_field(b"\x52", h))
    if fd_count:
        parts += (b"\x58", varint(fd_count))
    return b"".join(parts)


def frame(head, payload=b""):
    """One frame: the length, the header, then the payload field."""
    if payload:
        n = len(payload)
        plen = _SMALL[n] if n < 128 else varint(n)
        return b"".join((pack_length(len(head) + 1 + len(plen) + n), head, b"\x22", plen, payload))
    return pack_length(len(head)) + head


def as_bytes(text):
    """A subject, type URL or header as the bytes the wire carries."""
    return text.encode() if isinstance(text, str) else bytes(text)
