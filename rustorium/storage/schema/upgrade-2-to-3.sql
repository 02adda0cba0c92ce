-- Schema version 3: what a ledger shared by several nodes needs. The
-- database, not one process, then guards the available balance: each
-- balance row carries its pending outflows, idempotency keys are claimed in
-- a table of their own (so two nodes given the same key at once make one
-- transaction), and each block records its volume per token (so a node
-- taking over the market reads a day of volume from a few thousand rows).
-- A single node on SQLite keeps these in memory and leaves them be.

ALTER TABLE balances ADD COLUMN pending_out {amount} NOT NULL DEFAULT 0;

CREATE TABLE idempotency_keys (
    key_id BIGINT NOT NULL,
    idempotency_key TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (key_id, idempotency_key)
);

CREATE TABLE block_volumes (
    block_number BIGINT NOT NULL,
    token_id TEXT NOT NULL,
    amount {amount} NOT NULL,
    timestamp DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (block_number, token_id)
);
CREATE INDEX block_volumes_by_time ON block_volumes (timestamp);

UPDATE schema_version SET version = 3;
