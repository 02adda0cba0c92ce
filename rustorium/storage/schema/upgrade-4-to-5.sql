-- Schema version 5: the pending transactions by number. A block confirms
-- the oldest pending transactions and the ledger counts those left; on a
-- database shared by several nodes, transactions are numbered before they
-- commit, so pending ones are not only those after the last block, and
-- without this index both queries read the whole table every block (a
-- day of transfers). A partial index holds only what is pending.

CREATE INDEX transactions_pending ON transactions (seq) WHERE status = 'pending';

UPDATE schema_version SET version = 5;
