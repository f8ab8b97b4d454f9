-- The funnel registry: what a node asked for (`postern funnel`), whether it is open, when it
-- closes by itself, and the public TCP port of TCP funnels. A closed funnel keeps its row, so
-- its hostname (and public port) stay reserved for the same node, name and port.
-- `gates` holds the gate specs as JSON, webhook secrets included (the store file is 0600).
ALTER TABLE funnels ADD COLUMN protocol TEXT NOT NULL DEFAULT 'http';
ALTER TABLE funnels ADD COLUMN public_port BIGINT;
ALTER TABLE funnels ADD COLUMN gate_mode TEXT NOT NULL DEFAULT 'all';
ALTER TABLE funnels ADD COLUMN rate_limit TEXT;
ALTER TABLE funnels ADD COLUMN is_open BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE funnels ADD COLUMN opened_at BIGINT;
ALTER TABLE funnels ADD COLUMN expires_at BIGINT;
CREATE UNIQUE INDEX funnels_public_port ON funnels (public_port);
CREATE INDEX funnels_open_expiry ON funnels (is_open, expires_at);

-- Auth keys that register ingress nodes (`postern-coord keys create --ingress`).
ALTER TABLE auth_keys ADD COLUMN ingress BOOLEAN NOT NULL DEFAULT FALSE;
