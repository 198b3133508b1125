"""The hand-written frame encoder against protobuf's own parser: what it writes is the
Envelope it means, payload last."""

import pytest

from bus import _wire


@pytest.mark.parametrize("fields", [
    dict(kind=_wire.KIND_PUBLISH, subject=b"a.b"),
    dict(kind=_wire.KIND_REQUEST, subject=b"s" * 300, type_url=b"type.googleapis.com/x.Y",
         id=2**64 - 1, deadline_unix_ns=1_700_000_000_123_456_789, fd_count=3,
         headers=[(b"k", b"v"), (b"", b"x" * 200)]),
    dict(kind=_wire.KIND_REPLY, correlation_id=128, deadline_unix_ns=-5),
    dict(kind=_wire.KIND_CONTROL, subject=b"ping", id=127),
])
@pytest.mark.parametrize("payload", [b"", b"p", b"\x00" * 127, b"y" * 128, b"z" * 70000])
def test_frames_parse_as_the_envelope_meant(fields, payload):
    data = _wire.frame(_wire.header(**fields), payload)
    (length,) = _wire.unpack_length(data, 0)
    assert length == len(data) - 4
    got = _wire.Envelope.FromString(data[4:])
    want = _wire.Envelope(**{k: v for k, v in fields.items() if k != "headers"},
                          payload=payload)
    for key, value in fields.get("headers", []):
        want.headers.add(key=key, value=value)
    assert got == want
    if payload:  # written last: the frame ends with the payload's bytes
        assert data.endswith(payload)
