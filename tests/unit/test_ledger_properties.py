"""
Property test of the ledger (hypothesis, stateful): any interleaving of
transfers, commits that complete or fail, and blocks conserves every
token's total supply and never makes a balance negative; and what the store
holds always matches what the ledger believes.
"""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.internet.task import Clock
from twisted.logger import Logger

from rustorium.errors import RequestError
from rustorium.ledger import Ledger
from rustorium.requests import ExecuteTransaction
from rustorium.storage.keys import ApiKey
from tests.helpers import DEMO, MemoryLedgerStore, demo_catalog, genesis_snapshot

ADDRESSES = [
    "0xa11ce00000000000000000000000000000000001",
    "0xb0b0000000000000000000000000000000000002",
    "0x" + "c" * 40,
    "0x" + "d" * 40,
]
TOKENS = {t.token_id: t for t in DEMO.tokens}
KEY = ApiKey(1, "everyone", frozenset(ADDRESSES), "x")


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.clock = Clock()
        self.store = MemoryLedgerStore()
        self.store.hold = True
        self.announced = []
        self.ledger = Ledger(demo_catalog(), self.store, self.announced.extend, self.clock,
                             genesis_snapshot(),
                             commit_batch=3)
        self.ledger.log = Logger(observer=lambda event: None)
        self.accepted: set[str] = set()

    @rule(
        sender=st.sampled_from(ADDRESSES),
        recipient=st.sampled_from(ADDRESSES),
        token_id=st.sampled_from(sorted(TOKENS)),
        fraction=st.integers(1, 1000),
        key=st.one_of(st.none(), st.sampled_from(["k1", "k2", "k3"])),
    )
    def submit(self, sender, recipient, token_id, fraction, key):
        token = TOKENS[token_id]
        amount = str(token.total_supply * fraction // 1500 // 10**token.decimals + 1)
        request = ExecuteTransaction(sender, recipient, amount, token_id, key)
        try:
            d = self.ledger.submit(KEY, request)
        except RequestError:
            return
        d.addCallbacks(lambda row: self.accepted.add(row.transaction_id), lambda f: None)

    @precondition(lambda self: self.store.held)
    @rule()
    def commit(self):
        self.store.release()

    @precondition(lambda self: self.store.held)
    @rule()
    def fail(self):
        self.store.fail()

    @rule()
    def block(self):
        self.ledger.produce_block()

    @rule(seconds=st.floats(0, 100_000))
    def wait(self, seconds):
        self.clock.advance(seconds)

    @invariant()
    def supply_conserved_and_nothing_negative(self):
        for token_id, token in TOKENS.items():
            confirmed = [self.ledger.balance(a, token_id)[0] for a in ADDRESSES]
            available = [self.ledger.balance(a, token_id)[1] for a in ADDRESSES]
            assert sum(confirmed) == token.total_supply
            assert min(confirmed) >= 0
            assert min(available) >= 0

    @invariant()
    def store_matches_memory(self):
        """
        The balances written by blocks are those the ledger holds.
        """
        for (address, token_id), amount in self.store.balances.items():
            assert self.ledger.balance(address, token_id)[0] == amount

    def teardown(self):
        # Drain: every accepted transaction ends up confirmed exactly once.
        self.store.hold = False
        self.store.release_all()
        while self.ledger.produce_block().result is not None:
            pass
        confirmed = [t for t in self.store.transactions.values() if t.status == "confirmed"]
        assert {t.transaction_id for t in confirmed} == set(self.store.transactions)
        assert set(self.store.transactions) == self.accepted
        numbers = [b[0] for b in self.store.blocks]
        assert numbers == list(range(1, len(numbers) + 1))
        self.supply_conserved_and_nothing_negative()


LedgerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                           deadline=None)
TestLedgerProperties = LedgerMachine.TestCase
