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

CREATE INDEX transactions_by_status ON transactions (status, seq);
CREATE INDEX transactions_by_idempotency_key ON transactions (key_id, idempotency_key);
CREATE INDEX transactions_by_confirmation ON transactions (confirmed_at);

CREATE TABLE blocks (
    block_number INTEGER PRIMARY KEY,
    timestamp REAL NOT NULL,
    transaction_count INTEGER NOT NULL
);

UPDATE schema_version SET version = 2;
