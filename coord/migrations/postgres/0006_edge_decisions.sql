-- The edge log: request decisions ingress nodes report for the funnels the coord routes to
-- them (`postern funnel log`). No headers, bodies or query strings: the ingress never sends
-- them. Bounded by the coord (newest N per funnel, a maximum age; docs/coord.md), so rows
-- are deleted, unlike audit_records.
CREATE TABLE edge_decisions (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    funnel_id   BIGINT NOT NULL REFERENCES funnels (id) ON DELETE CASCADE,
    node_id     BIGINT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    ingress_id  BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    at_ms       BIGINT NOT NULL,
    hostname    TEXT NOT NULL,
    client      TEXT NOT NULL,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    gate        TEXT,
    result      TEXT NOT NULL,
    reason      TEXT,
    status      BIGINT NOT NULL,
    bytes       BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX edge_decisions_funnel ON edge_decisions (funnel_id, id);
CREATE INDEX edge_decisions_node ON edge_decisions (node_id, id);
CREATE INDEX edge_decisions_received ON edge_decisions (received_ms);
