"""
Exact decimal amounts.

Money and prices travel as decimal strings and are held as integers of the
smallest unit (``10**-decimals`` of a token), never as floats: a token with 18
decimals and a supply of ``10**24`` base units must round-trip exactly.
"""

import re

_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]+))?\Z")
MAX_WHOLE_DIGITS = 40
"""More whole digits than any supply has (and Python's int() refuses over
4,300): such an amount is refused before it is converted."""


class AmountError(ValueError):
    """
    A decimal string that is malformed or too precise; the message says why
    in words a client developer can act on.
    """


def parse_units(text: object, decimals: int, what: str = "amount") -> int:
    """
    Parse a non-negative decimal string into integer units of
    ``10**-decimals``.

    @raise AmountError: if C{text} is not a string of digits with an optional
        fraction, or has more fractional digits than C{decimals}.
    """
    if not isinstance(text, str):
        raise AmountError(f"{what} must be a decimal string such as \"12.5\"")
    match = _DECIMAL.match(text)
    if match is None:
        raise AmountError(
            f"{what} {_shorten(text)!r} is not a decimal string such as \"12.5\" "
            "(digits, an optional fraction, no sign or exponent)"
        )
    whole, fraction = match.group(1), match.group(2) or ""
    if len(whole) > MAX_WHOLE_DIGITS:
        raise AmountError(f"{what} {_shorten(text)!r} is too large")
    fraction = fraction.rstrip("0")
    if len(fraction) > decimals:
        raise AmountError(
            f"{what} {_shorten(text)!r} has {len(fraction)} decimal places; "
            f"at most {decimals} are allowed"
        )
    return int(whole) * 10**decimals + (int(fraction.ljust(decimals, "0")) if fraction else 0)


def format_units(units: int, decimals: int) -> str:
    """
    Format integer units of ``10**-decimals`` as the shortest exact decimal
    string (no trailing zeros, no trailing point).

    >>> format_units(1230, 3)
    '1.23'
    """
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), 10**decimals)
    if not fraction:
        return f"{sign}{whole}"
    digits = str(fraction).rjust(decimals, "0").rstrip("0")
    return f"{sign}{whole}.{digits}"


def _shorten(text: str, limit: int = 40) -> str:
    """
    Keep error messages short when a client sends a huge string.
    """
    return text if len(text) <= limit else text[:limit] + "..."
