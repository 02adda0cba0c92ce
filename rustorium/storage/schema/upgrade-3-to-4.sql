-- Schema version 4: what the HTTP API needs. Each API key has scopes (a
-- space-separated set of client, publish and admin; the keys made before
-- are client keys, as they always were), and back offices look up an
-- address's transactions, newest first, by either side of the transfer.

ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT 'client';

CREATE INDEX transactions_by_sender ON transactions (sender, seq);
CREATE INDEX transactions_by_recipient ON transactions (recipient, seq);

UPDATE schema_version SET version = 4;
