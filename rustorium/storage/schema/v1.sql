-- Rustorium schema, version 1: API keys, tokens, genesis balances and the
-- server's own counters. Plain SQL that SQLite and PostgreSQL both accept:
-- lower_snake identifiers, no quoting, 64-bit integers. The types in braces
-- differ between engines (see rustorium/storage/schema.py): {id_key} is a
-- key the database assigns (the rowid in SQLite, an identity column in
-- PostgreSQL), {amount} an exact integer of base units, which overflows
-- 64-bit columns for 18-decimal tokens (TEXT in SQLite, NUMERIC(78, 0) in
-- PostgreSQL).

CREATE TABLE schema_version (
    version INTEGER NOT NULL
);

CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE api_keys (
    key_id {id_key},
    key_hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);

CREATE TABLE api_key_addresses (
    key_id BIGINT NOT NULL REFERENCES api_keys (key_id),
    address TEXT NOT NULL,
    PRIMARY KEY (key_id, address)
);

CREATE TABLE tokens (
    token_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    symbol TEXT NOT NULL UNIQUE,
    decimals INTEGER NOT NULL,
    total_supply {amount} NOT NULL,
    initial_price {amount} NOT NULL
);

CREATE TABLE balances (
    address TEXT NOT NULL,
    token_id TEXT NOT NULL REFERENCES tokens (token_id),
    amount {amount} NOT NULL,
    PRIMARY KEY (address, token_id)
);

INSERT INTO schema_version (version) VALUES (1);
