-- Postern coordination store, PostgreSQL dialect. Times are Unix seconds (audit:
-- milliseconds). Lists (tags, groups, endpoints, gates) are JSON arrays in TEXT columns, so
-- both backends bind and read the same Rust types.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    login        TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL DEFAULT '',
    idp_groups   TEXT NOT NULL DEFAULT '[]',
    created_at   BIGINT NOT NULL
);

CREATE TABLE nodes (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    machine_key TEXT NOT NULL UNIQUE,
    node_key    TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL UNIQUE,
    ipv4        TEXT NOT NULL UNIQUE,
    ipv6        TEXT NOT NULL UNIQUE,
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    tags        TEXT NOT NULL DEFAULT '[]',
    created_at  BIGINT NOT NULL,
    last_seen   BIGINT,
    key_expiry  BIGINT,
    ephemeral   BOOLEAN NOT NULL DEFAULT FALSE,
    approved    BOOLEAN NOT NULL DEFAULT FALSE,
    is_ingress  BOOLEAN NOT NULL DEFAULT FALSE,
    endpoints   TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX nodes_user_id ON nodes (user_id);

CREATE TABLE auth_keys (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_hash   TEXT NOT NULL UNIQUE,
    user_id    BIGINT REFERENCES users (id) ON DELETE CASCADE,
    reusable   BOOLEAN NOT NULL,
    ephemeral  BOOLEAN NOT NULL,
    tags       TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    used_count BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE audit_records (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms       BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    source_addr TEXT,
    details     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_records_at ON audit_records (at_ms);
CREATE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only';
END;
$$;
CREATE TRIGGER audit_records_no_change BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION audit_records_append_only();

CREATE TABLE certificates (
    hostname   TEXT PRIMARY KEY,
    chain_pem  TEXT NOT NULL,
    key_pem    TEXT NOT NULL,
    not_after  BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE funnels (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node_id    BIGINT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    port       BIGINT NOT NULL,
    hostname   TEXT NOT NULL UNIQUE,
    ttl_secs   BIGINT,
    gates      TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL,
    UNIQUE (node_id, port)
);
