"""
The broker between the nodes of a cluster: the contract
(L{rustorium.broker.interface.IBroker}) and its Redis implementation
(L{rustorium.broker.redis.RedisBroker}).

This package imports no implementation: C{rustorium.broker.redis} imports
the reactor (through txredisapi), so import it only once the reactor is
installed.
"""

from .interface import (
    BrokerUnavailable,
    Claim,
    CurrentState,
    IBroker,
    Publication,
    ReplayResult,
    SubscriptionRecord,
)

__all__ = [
    "BrokerUnavailable",
    "Claim",
    "CurrentState",
    "IBroker",
    "Publication",
    "ReplayResult",
    "SubscriptionRecord",
]
