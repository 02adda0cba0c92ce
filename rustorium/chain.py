"""
The chain service: a block every block interval, confirming the ledger's
pending transactions.
"""

from twisted.application.internet import TimerService
from twisted.logger import Logger

from .ledger import Ledger


class ChainService(TimerService):
    """
    Produces blocks on the reactor's clock. A failed block is logged and
    its transactions stay pending for the next one; the timer never stops.
    """

    log = Logger()

    def __init__(self, ledger: Ledger, interval: float, clock) -> None:
        super().__init__(interval, self._block)
        self.clock = clock
        self._ledger = ledger

    def _block(self):
        try:
            d = self._ledger.produce_block()
        except Exception:
            self.log.failure("Producing a block failed")
            return None
        d.addErrback(lambda f: self.log.failure("Producing a block failed", f))
        return d
