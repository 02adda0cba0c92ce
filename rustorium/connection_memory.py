"""
What an open WebSocket connection keeps in memory, and how it keeps less.

A node holds tens of thousands of connections, so every byte an Autobahn
protocol instance carries is paid that many times. Three things make an
Autobahn server protocol larger than it needs to be once it is open:

1. Autobahn copies each of its ~45 protocol options from the factory onto
   every instance (C{WebSocketProtocol._connectionMade}), unless the
   instance already has the attribute. L{configured_protocol} makes a
   subclass that carries the factory's options as class attributes, so
   there is nothing to copy and every connection reads the one value.
2. The opening handshake leaves its raw request and response, the parsed
   headers and query, and a few strings behind; none is read once the
   connection is open. L{shed_handshake} drops them and rebuilds the
   instance's attribute dict at the size its remaining attributes need
   (dicts never shrink by themselves).
3. An empty C{deque} for Autobahn's chopped or synchronous sends (760
   bytes with its first block), which this server never makes: it is
   replaced by an empty tuple until a send needs it (see
   L{needs_send_queue}).

Together: about 6 KiB less per open connection (12.5 KiB of RSS per idle
connection before, 6.6 KiB after, 3,000 connections; see
C{docs/benchmarks.rst}).
"""

import types
from collections import deque
from typing import Any

HANDSHAKE_ONLY = (
    "http_request_data",
    "http_response_data",
    "http_headers",
    "http_request_params",
    "http_status_line",
    "http_request_uri",
    "http_request_host",
    "http_request_path",
    "websocket_protocols",
    "websocket_extensions",
    "websocket_origin",
    "_wskey",
)
"""
Attributes of an Autobahn server protocol that only the opening handshake
reads (C{processHandshake}, C{succeedHandshake}): dropped once it is open.
"""

RELEASED_AT_OPEN = ("_transport_details",)
"""
Attributes read once the connection is open only through a public
accessor that may answer C{None} (C{transport_details}): set to C{None}.
"""

NO_SEND_QUEUE: tuple = ()
"""
Stands for Autobahn's empty C{send_queue}: it has a length of 0, as the
deque had, and no C{append}, so a send that would queue must first call
L{needs_send_queue} (a forgotten one fails loudly rather than sharing it).
"""


def configured_protocol(protocol: type, factory: Any) -> type:
    """
    A subclass of C{protocol} carrying C{factory}'s current protocol
    options (C{protocol.CONFIG_ATTRS}) as class attributes.

    Functions among them (C{perMessageCompressionAccept}) are wrapped in
    C{staticmethod}, so that reading them from an instance gives the
    function itself, as the copied instance attribute did.
    """
    options = {}
    for name in protocol.CONFIG_ATTRS:
        value = getattr(factory, name)
        if isinstance(value, types.FunctionType | types.BuiltinFunctionType | types.MethodType):
            value = staticmethod(value)
        options[name] = value
    # Options set again: derive from the class they were first set on.
    base = protocol.__dict__.get("_configured_from", protocol)
    options["_configured_from"] = base
    options["__module__"] = base.__module__
    options["__doc__"] = base.__doc__
    return type(base.__name__, (base,), options)


def shed_handshake(connection: Any) -> None:
    """
    Drop what only the opening handshake needed from an open connection,
    and rebuild its attribute dict at the size it now needs.
    """
    attributes = connection.__dict__
    for name in HANDSHAKE_ONLY:
        attributes.pop(name, None)
    for name in RELEASED_AT_OPEN:
        if name in attributes:
            attributes[name] = None
    queue = attributes.get("send_queue")
    if queue is not None and not queue:
        attributes["send_queue"] = NO_SEND_QUEUE
    # A copy of a dict with deleted entries is built anew, at the size
    # its entries need.
    connection.__dict__ = dict(attributes)


def needs_send_queue(connection: Any) -> None:
    """
    Give C{connection} a deque of its own before Autobahn queues a send.
    """
    if connection.send_queue is NO_SEND_QUEUE:
        connection.send_queue = deque()
