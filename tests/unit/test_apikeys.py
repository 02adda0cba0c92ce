"""
The key store: keys presented in one reactor turn are looked up together,
on a real database (SQLite and a throwaway PostgreSQL), with the reactor's
clock faked.
"""

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from rustorium.apikeys import KeyStore, hash_key
from rustorium.bootstrap import prepare_database
from rustorium.storage import run_blocking
from rustorium.storage.keys import insert_key, revoke_key

ALICE = "0xa11ce00000000000000000000000000000000001"
BOB = "0xb0b0000000000000000000000000000000000002"


class CountingDatabase:
    """
    L{rustorium.storage.Database} run at once, counting interactions.
    """

    def __init__(self, engine) -> None:
        self.engine = engine
        self.runs = 0

    def run(self, interaction, *args):
        self.runs += 1
        return succeed(run_blocking(self.engine, interaction, *args))


def results(ds: list[Deferred]) -> list:
    out = []
    for d in ds:
        d.addBoth(out.append)
    assert len(out) == len(ds), "not all fired"
    return out


def test_keys_of_one_turn_are_looked_up_together(engine):
    prepare_database(engine, None)
    alice = run_blocking(engine, insert_key, hash_key("rk_alice"), "alice", "now", [ALICE])
    both = run_blocking(engine, insert_key, hash_key("rk_both"), "both", "now", [ALICE, BOB])
    gone = run_blocking(engine, insert_key, hash_key("rk_gone"), "gone", "now", [BOB])
    run_blocking(engine, revoke_key, gone, "now")
    clock, database = Clock(), CountingDatabase(engine)
    store = KeyStore(database, clock)
    asked = ["rk_alice", "rk_both", "rk_alice", "rk_gone", "rk_unknown", "", "x" * 300]
    pending = [store.authenticate(key) for key in asked]
    assert database.runs == 0, "nothing is looked up before the turn ends"
    clock.advance(0)
    assert database.runs == 1
    found = results(pending)
    assert [(k.key_id, k.addresses) if k else None for k in found] == [
        (alice, frozenset({ALICE})), (both, frozenset({ALICE, BOB})),
        (alice, frozenset({ALICE})), None, None, None, None,
    ]
    later = store.authenticate("rk_both")
    clock.advance(0)
    assert database.runs == 2 and results([later])[0].key_id == both


def test_a_failed_lookup_fails_every_handshake_of_the_turn(engine):
    prepare_database(engine, None)

    class Broken:
        def run(self, interaction, *args):
            from twisted.internet.defer import fail

            return fail(OSError("database gone"))

    clock = Clock()
    store = KeyStore(Broken(), clock)
    pending = [store.authenticate("rk_a"), store.authenticate("rk_b")]
    clock.advance(0)
    assert [f.type for f in results(pending)] == [OSError, OSError]
