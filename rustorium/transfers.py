"""
What every ledger checks of a transfer before it looks at balances: the
token exists, the amount is a positive decimal within the token's
decimals, the addresses differ, and the API key controls the sender.
"""

from .amounts import AmountError, parse_units
from .catalog import Catalog, Token
from .errors import ErrorCode, RequestError
from .requests import ExecuteTransaction
from .storage.keys import ApiKey


def known_token(catalog: Catalog, token_id: str) -> Token:
    """
    @raise RequestError: C{not_found} for an unknown token.
    """
    token = catalog.tokens.get(token_id)
    if token is None:
        raise RequestError(ErrorCode.NOT_FOUND, f"no token {token_id}")
    return token


def validate_transfer(
    catalog: Catalog, api_key: ApiKey, request: ExecuteTransaction
) -> tuple[Token, int]:
    """
    The token and the amount in base units of a transfer that may be tried.

    @raise RequestError: C{not_found}, C{invalid_params} or C{forbidden}.
    """
    token = known_token(catalog, request.token_id)
    try:
        amount = parse_units(request.amount, token.decimals)
    except AmountError as e:
        raise RequestError(ErrorCode.INVALID_PARAMS, f"execute_transaction: {e}") from None
    if amount == 0:
        raise RequestError(ErrorCode.INVALID_PARAMS,
                           "execute_transaction: amount must be more than zero")
    if request.sender == request.recipient:
        raise RequestError(ErrorCode.INVALID_PARAMS,
                           "execute_transaction: from and to are the same address")
    if request.sender not in api_key.addresses:
        raise RequestError(
            ErrorCode.FORBIDDEN,
            f"this API key may not send from {request.sender}",
        )
    return token, amount
