"""How bus reports failure in Python: one exception, BusError, whose ``code`` is the name of
the C++ client's ``bus::errc`` value (bus/include/bus/error.hpp), so that code written against
either reads the same: ``no_responders``, ``timeout``, ``service_lost``, ``broker_unavailable``,
``expired``, ``request_failed``...
"""

# The names busd and services put in an ERROR envelope's subject (error_wire_name in
# bus/src/core/error.cpp), read back as the errc they stand for. A name not in the table is a
# service's own (Responder.fail): it reads back as request_failed, the name kept in ``name``.
_WIRE_NAMES = {
    "no_responders": "no_responders",
    "service_lost": "service_lost",
    "timeout": "timeout",
    "no_such_client": "no_such_client",
    "invalid_subject": "invalid_subject",
    "forbidden": "forbidden",
    "message_too_large": "message_too_large",
    "fds_not_supported": "fds_not_supported",
    "expired": "expired",
    "bad_request": "bad_frame",
}

# The C++ category's messages (bus/src/core/error.cpp), for the errors a Python client meets.
_MESSAGES = {
    "frame_too_large": "frame longer than the limit",
    "bad_frame": "frame does not hold a valid envelope",
    "truncated_frame": "peer closed in the middle of a frame",
    "fd_mismatch": "frame claims more file descriptors than arrived with it",
    "unexpected_fds": "file descriptors arrived that no frame claims",
    "too_many_fds": "too many file descriptors for one message",
    "control_truncated": "file descriptors were dropped by the kernel (MSG_CTRUNC)",
    "channel_closed": "channel closed",
    "fds_not_supported": "file descriptors cannot travel this way",
    "wrong_type": "payload is not of the requested type",
    "unknown_type": "type known neither here nor by busd",
    "no_responders": "no responders: nobody serves this service",
    "timeout": "timed out",
    "service_lost": "service lost: the instance handling the request went away",
    "broker_unavailable": "broker unavailable",
    "no_such_client": "no such client",
    "invalid_subject": "invalid subject or pattern",
    "forbidden": "forbidden by the broker's access rules",
    "message_too_large": "message over the broker's size limit",
    "bad_endpoint": "endpoint must be unix://PATH (the Python client speaks unix:// only)",
    "request_failed": "the service answered with an error",
    "expired": "the request's deadline passed before it reached a service",
}


class BusError(Exception):
    """A bus error. ``code``: the errc name; ``detail``: what busd or the service said (its
    "detail" header), or what went wrong locally; ``name``: for request_failed, the service's
    name for the error; ``message``: the ERROR message itself, when there was one."""

    def __init__(self, code, detail="", *, name=None, message=None):
        self.code = code
        self.detail = detail
        self.name = name if name is not None else code
        self.message = message
        text = _MESSAGES.get(code, code)
        if code == "request_failed":
            text = f"{text}: {self.name}"
        super().__init__(f"{text} ({detail})" if detail else text)


def error_from_wire(name, detail="", message=None):
    """The BusError an ERROR envelope named ``name`` stands for."""
    code = _WIRE_NAMES.get(name, "request_failed")
    return BusError(code, detail, name=name, message=message)


def wire_name(code):
    """The name an errc goes by on the wire (bad_request for those without one)."""
    for name, c in _WIRE_NAMES.items():
        if c == code:
            return name
    return "bad_request"
