-- Schema version 2: the ledger. Transactions in submission order (seq), and
-- the blocks that confirm them. Amounts are TEXT: exact integers of base units.

CREATE TABLE transactions (
    seq INTEGER PRIMARY KEY,
    transaction_id TEXT NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    token_id TEXT NOT NULL REFERENCES tokens (token_id),
    amount TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    key_id INTEGER NOT NULL,
    idempotency_key TEXT,
    submitted_at REAL NOT NULL,
    block_number INTEGER,
    confirmed_at REAL
);

-- Blocks confirm transactions in seq order, so the pending ones are found
-- after the last block's range with the primary key alone; the only other
-- index is partial: most transactions have no idempotency key.
CREATE INDEX transactions_by_idempotency_key ON transactions (key_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- A block confirms the pending transactions numbered first_seq to last_seq.
CREATE TABLE blocks (
    block_number INTEGER PRIMARY KEY,
    timestamp REAL NOT NULL,
    transaction_count INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
);
CREATE INDEX blocks_by_time ON blocks (timestamp);

UPDATE schema_version SET version = 2;
