"""
The shapes of identifiers on the wire.

Addresses and token ids are ``0x`` and 40 hex digits, transaction ids ``0x``
and 64; all are case-insensitive and normalised to lower case.
"""

import re

_ADDRESS = re.compile(r"0[xX][0-9a-fA-F]{40}\Z")
_TRANSACTION_ID = re.compile(r"0[xX][0-9a-fA-F]{64}\Z")


def normalise_address(value: object) -> str | None:
    """
    Return the lower-case form of an address or token id, or C{None} if
    C{value} is not one.
    """
    if isinstance(value, str) and _ADDRESS.match(value):
        return value.lower()
    return None


def normalise_transaction_id(value: object) -> str | None:
    """
    Return the lower-case form of a transaction id, or C{None} if C{value}
    is not one.
    """
    if isinstance(value, str) and _TRANSACTION_ID.match(value):
        return value.lower()
    return None
