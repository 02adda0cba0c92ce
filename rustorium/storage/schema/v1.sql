-- Rustorium schema, version 1: API keys, tokens, genesis balances and the
-- server's own counters. Plain SQL that SQLite and PostgreSQL both accept:
-- lower_snake identifiers, no quoting, amounts as TEXT (exact integers of
-- base units, which overflow 64-bit columns for 18-decimal tokens).

CREATE TABLE schema_version (
    version INTEGER NOT NULL
);

CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE api_keys (
    key_id INTEGER PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);

CREATE TABLE api_key_addresses (
    key_id INTEGER NOT NULL REFERENCES api_keys (key_id),
    address TEXT NOT NULL,
    PRIMARY KEY (key_id, address)
);

CREATE TABLE tokens (
    token_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    symbol TEXT NOT NULL UNIQUE,
    decimals INTEGER NOT NULL,
    total_supply TEXT NOT NULL,
    initial_price TEXT NOT NULL
);

CREATE TABLE balances (
    address TEXT NOT NULL,
    token_id TEXT NOT NULL REFERENCES tokens (token_id),
    amount TEXT NOT NULL,
    PRIMARY KEY (address, token_id)
);

INSERT INTO schema_version (version) VALUES (1);
