-- Postern coordination store, SQLite dialect. Times are Unix seconds (audit: milliseconds).
-- Lists (tags, groups, endpoints, gates) are JSON arrays in TEXT columns.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    login        TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL DEFAULT '',
    idp_groups   TEXT NOT NULL DEFAULT '[]',
    created_at   INTEGER NOT NULL
);

CREATE TABLE nodes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_key TEXT NOT NULL UNIQUE,
    node_key    TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL UNIQUE,
    ipv4        TEXT NOT NULL UNIQUE,
    ipv6        TEXT NOT NULL UNIQUE,
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    tags        TEXT NOT NULL DEFAULT '[]',
    created_at  INTEGER NOT NULL,
    last_seen   INTEGER,
    key_expiry  INTEGER,
    ephemeral   BOOLEAN NOT NULL DEFAULT FALSE,
    approved    BOOLEAN NOT NULL DEFAULT FALSE,
    is_ingress  BOOLEAN NOT NULL DEFAULT FALSE,
    endpoints   TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX nodes_user_id ON nodes (user_id);

CREATE TABLE auth_keys (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    key_hash   TEXT NOT NULL UNIQUE,
    user_id    INTEGER REFERENCES users (id) ON DELETE CASCADE,
    reusable   BOOLEAN NOT NULL,
    ephemeral  BOOLEAN NOT NULL,
    tags       TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    used_count INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE audit_records (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms       INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    source_addr TEXT,
    details     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_records_at ON audit_records (at_ms);
CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;
CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;

CREATE TABLE certificates (
    hostname   TEXT PRIMARY KEY NOT NULL,
    chain_pem  TEXT NOT NULL,
    key_pem    TEXT NOT NULL,
    not_after  INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE funnels (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id    INTEGER NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    port       INTEGER NOT NULL,
    hostname   TEXT NOT NULL UNIQUE,
    ttl_secs   INTEGER,
    gates      TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL,
    UNIQUE (node_id, port)
);
