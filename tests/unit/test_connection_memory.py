"""
What an open connection keeps (rustorium.connection_memory): the protocol
options on the class, the handshake's leftovers dropped, Autobahn's send
queue only when a send needs it, and one API key record shared by a key's
connections; and reads that skip the adapter's debug formatting.
"""

import gc

from autobahn.websocket import protocol as autobahn_protocol
from twisted.internet.defer import succeed

from rustorium.apikeys import KeyStore
from rustorium.connection_memory import HANDSHAKE_ONLY, NO_SEND_QUEUE
from rustorium.storage.keys import ApiKey
from tests.unit.test_websocket import Peer, server_frames


def test_options_live_on_the_class_not_on_each_connection(clock):
    peer = Peer(clock)
    protocol = peer.protocol
    for name in type(protocol).CONFIG_ATTRS:
        if name == "openHandshakeTimeout":
            # Each connection's handshake deadline is its own (admission).
            continue
        assert name not in protocol.__dict__, name
        assert getattr(protocol, name) == getattr(peer.factory, name), name
    # A function option reads as the function itself, not as a method.
    assert protocol.perMessageCompressionAccept([]) is None


def test_options_set_again_reach_new_connections(clock):
    peer = Peer(clock)
    peer.factory.setProtocolOptions(maxMessagePayloadSize=1234)
    protocol = peer.factory.buildProtocol(None)
    assert protocol.maxMessagePayloadSize == 1234
    # Derived from the first class again, not stacked on the last one.
    assert type(protocol).__mro__[1] is type(peer.protocol).__mro__[1]


def test_open_connection_drops_the_handshake(clock):
    peer = Peer(clock)
    assert b"101 Switching Protocols" in peer.open()
    kept = peer.protocol.__dict__
    assert not set(HANDSHAKE_ONLY) & set(kept)
    assert kept["send_queue"] is NO_SEND_QUEUE
    # The connection still works both ways.
    peer.send({"type": "ping", "id": "p1"})
    frames = peer.received()
    assert any(b'"pong"' in payload for _, payload in frames)


def test_attribute_dict_is_rebuilt_at_its_size(clock):
    peer = Peer(clock)
    peer.open()
    after = peer.protocol.__dict__
    # No bigger than a dict filled from empty with what it holds (dicts
    # never shrink when entries are deleted).
    assert after.__sizeof__() <= dict(after.items()).__sizeof__()


def test_a_queued_send_gets_a_queue_of_its_own(clock):
    """
    Autobahn's synchronous sends queue, and drain the queue with its
    C{_send}, which this protocol once overrode by accident.
    """
    first, second = Peer(clock), Peer(clock)
    first.open()
    second.open()
    first.protocol.sendData(b"\x89\x00", sync=True)
    assert first.protocol.send_queue is not NO_SEND_QUEUE
    assert second.protocol.send_queue is NO_SEND_QUEUE
    clock.advance(1)
    assert (9, b"") in server_frames(first.transport.value())
    assert NO_SEND_QUEUE == ()


def test_autobahn_still_has_what_this_relies_on():
    """
    A guard: if an Autobahn release renames these, the savings stop (the
    server still works, on Autobahn's own path); this test says which.
    """
    assert "send_queue" in autobahn_protocol.WebSocketProtocol.sendData.__code__.co_names
    assert "CONFIG_ATTRS" in dir(autobahn_protocol.WebSocketServerProtocol)


class _FreshRecords:
    """
    Stands for the database: each lookup builds a new record object, as a
    query does, from the row now stored.
    """

    def __init__(self, row):
        self.row = row

    def run(self, function, hashes):
        return succeed({key_hash: ApiKey(*self.row) for key_hash in hashes})


def test_a_keys_connections_share_one_record(clock):
    row = [7, "bot", frozenset({"0x" + "1" * 40}), "2026-11-30T00:00:00Z", None]
    database = _FreshRecords(row)
    store = KeyStore(database, clock)

    def authenticate():
        found = []
        store.authenticate("rk_" + "x" * 43).addCallback(found.append)
        clock.advance(0)
        return found[0]

    first, second = authenticate(), authenticate()
    assert first is second
    # A record that changed (its addresses) is not replaced by the old one.
    database.row = [*row[:2], frozenset(), *row[3:]]
    changed = authenticate()
    assert changed is not first and changed.addresses == frozenset()
    # A revoked key is refused, whatever is shared.
    database.row = [*row[:4], "2026-11-30T01:00:00Z"]
    assert authenticate() is None
    # Once no connection holds a record, it is forgotten.
    del first, second, changed
    gc.collect()
    assert len(store._records) == 0


def test_autobahn_reads_do_nothing_but_log_and_parse():
    """
    A guard: the protocol's C{dataReceived} skips the Twisted adapter's,
    which only logs at debug level and hands the bytes to C{_dataReceived}.
    If an Autobahn release makes it do more, this test names it.
    """
    from autobahn.twisted.websocket import WebSocketAdapterProtocol

    names = set(WebSocketAdapterProtocol.dataReceived.__code__.co_names)
    assert names <= {"log", "debug", "hltype", "hlval", "dataReceived", "peer", "len",
                     "_dataReceived"}, f"Autobahn's dataReceived now also uses {names}"
    assert callable(getattr(autobahn_protocol.WebSocketProtocol, "_dataReceived", None))
