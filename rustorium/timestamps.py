"""
Wire timestamps: ISO 8601 in UTC with a ``Z`` and microseconds.

The spec's examples show whole seconds; a fraction is compatible with every
ISO 8601 parser and lets clients measure delivery delay.
"""

from datetime import UTC, datetime


def isoformat(seconds: float) -> str:
    """
    Format a POSIX time (as from ``IReactorTime.seconds``) for the wire.

    >>> isoformat(0.25)
    '1970-01-01T00:00:00.250000Z'
    """
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
