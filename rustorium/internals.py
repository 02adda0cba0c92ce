"""
The private attributes of Twisted that the server leans on, each detected
once, so that a Twisted release that changes one makes the server take the
public path instead of misbehaving.

- C{FileDescriptor._tempDataLen}: the bytes a transport holds in its
  second write buffer (beside C{dataBuffer}). The write-through transport
  (L{rustorium.output.WriteThroughServer}) sends straight to the socket only
  when both buffers are empty; were the count kept elsewhere, it would
  overtake buffered bytes and corrupt the stream. Without it, listening
  ports use Twisted's own transports (C{write-through} off).
- C{tcp.Port._type}: the word in Twisted's "(TCP Port N Closed)" log line,
  which Twisted's own C{listenSSL} sets to C{"TLS"}; setting it is cosmetic
  and skipped where ports have no such attribute.
- C{StreamServerEndpointService._raiseSynchronously}: makes a port that
  cannot listen stop start-up with an exception rather than a logged error
  (as C{strports.service} does). Without it, L{rustorium.tls.listening_service}
  uses a service of its own built on the public endpoint API.

C{tests/unit/test_twisted_privates.py} checks each on the installed Twisted
and names the attribute and the version when one has changed.
"""

from functools import cache
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import abstract

TEMP_DATA_LEN = "_tempDataLen"
PORT_TYPE = "_type"
RAISE_SYNCHRONOUSLY = "_raiseSynchronously"


class _NullReactor:
    """Just enough reactor for a FileDescriptor that is never run."""

    def addWriter(self, descriptor: Any) -> None:
        pass

    def removeWriter(self, descriptor: Any) -> None:
        pass


def counts_buffered_bytes(descriptor_class: type = abstract.FileDescriptor) -> bool:
    """
    Whether C{descriptor_class} keeps what C{write} buffers in C{dataBuffer}
    plus C{_tempDataLen} bytes, and empties both once C{doWrite} has sent
    everything: the two things the write-through transport checks.
    """
    try:
        descriptor = descriptor_class(_NullReactor())
        if getattr(descriptor, TEMP_DATA_LEN) != 0 or descriptor.dataBuffer:
            return False
        descriptor.connected = True
        descriptor.write(b"abc")
        if getattr(descriptor, TEMP_DATA_LEN) != 3 or descriptor.dataBuffer:
            return False
        descriptor.writeSomeData = len
        descriptor.doWrite()
        return getattr(descriptor, TEMP_DATA_LEN) == 0 and not descriptor.dataBuffer
    except Exception:
        return False


@cache
def write_through_supported() -> bool:
    """L{counts_buffered_bytes} for Twisted's transports, checked once."""
    return counts_buffered_bytes()


def name_port(port: Any, kind: str) -> None:
    """
    Name a listening port's connections in Twisted's log lines (C{"TLS"}),
    where Twisted's ports have that attribute.
    """
    if hasattr(port, PORT_TYPE):
        setattr(port, PORT_TYPE, kind)


def raises_synchronously(service_class: type = StreamServerEndpointService) -> bool:
    """
    Whether C{service_class}'s C{privilegedStartService} reads
    C{_raiseSynchronously}, so setting it makes a failure to listen raise.
    """
    if not hasattr(service_class, RAISE_SYNCHRONOUSLY):
        return False
    start = getattr(service_class, "privilegedStartService", None)
    code = getattr(start, "__code__", None)
    return code is not None and RAISE_SYNCHRONOUSLY in code.co_names
