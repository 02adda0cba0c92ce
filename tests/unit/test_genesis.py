"""
Genesis validation: every malformed file is refused with a message naming
the problem.
"""

import json

import pytest

from rustorium.amounts import AmountError, format_units, parse_units
from rustorium.genesis import GenesisError, demo_genesis, parse_genesis

A = "0x" + "a" * 40
B = "0x" + "b" * 40


def token(**overrides):
    base = {
        "token_id": "0x" + "1" * 40, "name": "My Token", "symbol": "MTK", "decimals": 18,
        "total_supply": "1000000", "price": "1.23", "balances": {A: "600000", B: "400000"},
    }
    base.update(overrides)
    return base


def parse(*tokens):
    return parse_genesis(json.dumps({"tokens": list(tokens)}), "g.json")


def test_valid():
    genesis = parse(token())
    [t] = genesis.tokens
    assert t.total_supply == 10**24
    assert t.balances == {A: 6 * 10**23, B: 4 * 10**23}
    assert t.price == 123_000_000
    assert t.market == "MTK/USD"


def test_demo_genesis_is_valid():
    genesis = demo_genesis()
    assert [t.symbol for t in genesis.tokens] == ["MTK", "STK", "RST"]
    assert len(genesis.addresses) == 2


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ([], "at least one token"),
        ([token(balances={A: "1"})], "balances add up to 1, not the total_supply 1000000"),
        ([token(token_id="0x12")], "token_id must be 0x followed by 40 hex digits"),
        ([token(symbol="mtk!")], "symbol must be"),
        ([token(decimals=-1)], "decimals must be"),
        ([token(decimals=True)], "decimals must be"),
        ([token(total_supply=1000000)], "total_supply must be a decimal string"),
        ([token(total_supply="1e6")], "not a decimal string"),
        ([token(price="0")], "price must be more than zero"),
        ([token(price="1.123456789")], "9 decimal places"),
        ([token(decimals=0, total_supply="10.5", balances={A: "10.5"})], "1 decimal places"),
        ([token(balances={"alice": "1000000"})], "balance address 'alice'"),
        ([token(balances={A: "1000000", A.upper().replace("0X", "0x"): "0"})], "appears twice"),
        ([token(name="")], "name must be"),
        ([token(colour="red")], "unknown field colour"),
        ([{"name": "x"}], "missing"),
        ([token(), token(symbol="OTHER")], "two tokens have the token_id"),
        ([token(), token(token_id="0x" + "2" * 40)], "two tokens have the symbol MTK"),
    ],
)
def test_invalid(tokens, message):
    with pytest.raises(GenesisError) as raised:
        parse(*tokens)
    assert message in str(raised.value)
    assert str(raised.value).startswith("g.json")


@pytest.mark.parametrize("text", ["not json", "[]", '{"tokens": 3}'])
def test_not_a_genesis(text):
    with pytest.raises(GenesisError):
        parse_genesis(text, "g.json")


class TestAmounts:
    def test_round_trip_large(self):
        """
        18 decimals and 10**24 base units round-trip exactly.
        """
        units = parse_units("1000000.000000000000000001", 18)
        assert units == 10**24 + 1
        assert format_units(units, 18) == "1000000.000000000000000001"

    @pytest.mark.parametrize("text", ["-1", "+1", "1e3", "01", ".5", "1.", " 1", "1,0", ""])
    def test_malformed(self, text):
        with pytest.raises(AmountError):
            parse_units(text, 18)

    def test_too_many_digits(self):
        """
        An amount with more whole digits than any supply is refused before
        int() would choke on it (Python refuses over 4,300 digits).
        """
        with pytest.raises(AmountError) as raised:
            parse_units("9" * 70_000, 18)
        assert "too large" in str(raised.value)
        assert parse_units("9" * 40, 0) == int("9" * 40)

    def test_too_precise(self):
        with pytest.raises(AmountError) as raised:
            parse_units("1.001", 2)
        assert "3 decimal places; at most 2" in str(raised.value)

    def test_trailing_zeros_allowed(self):
        assert parse_units("1.500000", 2) == 150

    def test_format(self):
        assert format_units(0, 18) == "0"
        assert format_units(150, 2) == "1.5"
        assert format_units(-5, 1) == "-0.5"
