-- Schema version 2: the ledger. Transactions in submission order (seq: a
-- single node numbers them itself, a cluster's shared ledger lets the
-- database), and the blocks that confirm them ({int_key}: numbered by the
-- server; both are the rowid in SQLite). Times are POSIX seconds in DOUBLE
-- PRECISION (PostgreSQL's REAL has 24 bits: whole minutes at best).

CREATE TABLE transactions (
    seq {id_key},
    transaction_id TEXT NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    token_id TEXT NOT NULL REFERENCES tokens (token_id),
    amount {amount} NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    key_id BIGINT NOT NULL,
    idempotency_key TEXT,
    submitted_at DOUBLE PRECISION NOT NULL,
    block_number BIGINT,
    confirmed_at DOUBLE PRECISION
);

-- Blocks confirm transactions in seq order, so the pending ones are found
-- after the last block's range with the primary key alone; the only other
-- index is partial: most transactions have no idempotency key.
CREATE INDEX transactions_by_idempotency_key ON transactions (key_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- A block confirms the pending transactions numbered first_seq to last_seq.
CREATE TABLE blocks (
    block_number {int_key},
    timestamp DOUBLE PRECISION NOT NULL,
    transaction_count BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL
);
CREATE INDEX blocks_by_time ON blocks (timestamp);

UPDATE schema_version SET version = 2;
