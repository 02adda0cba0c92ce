"""
WebSocket close codes the server sends, and what a client should do.

Autobahn lets an application send only 1000 and 3000-4999 (it sends 1009 and
the other protocol codes itself), so the application's codes are grouped by
what the client should do next, as Pusher groups them:

- 4000-4099: do not reconnect as is (fix the key or the client first);
- 4100-4199: reconnect with backoff (subscriptions stay resumable);
- 4200-4299: reconnect at once (the server is restarting).
"""

from enum import IntEnum


class CloseCode(IntEnum):
    """
    Close codes sent by the server.
    """

    NORMAL = 1000
    """The client closed; the server answers in kind."""
    MESSAGE_TOO_BIG = 1009
    """A message was larger than ``max-message-size`` (sent by Autobahn)."""
    KEY_REVOKED = 4001
    """The API key was revoked while connected. Do not reconnect with it."""
    POLICY_VIOLATION = 4008
    """The client kept sending past the rate limit. Fix the client first."""
    HEARTBEAT_TIMEOUT = 4100
    """Nothing was received for the heartbeat timeout. Reconnect with backoff."""
    SLOW_CONSUMER = 4101
    """The client read too slowly and its backlog passed the bound."""
    REPLAY_OVERTAKEN = 4102
    """No longer sent: replays are read whole when C{reconnect} is answered."""
    BROKER_LOST = 4103
    """The node lost its link to the cluster's broker and may have missed
    updates. Reconnect (to any node) with backoff and resume."""
    INTERNAL_ERROR = 4110
    """The server failed on this connection. Reconnect with backoff."""
    SHUTTING_DOWN = 4200
    """The server is shutting down or restarting. Reconnect at once."""
