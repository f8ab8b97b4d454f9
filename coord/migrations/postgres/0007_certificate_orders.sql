-- Who is ordering a funnel hostname's certificate right now: ingress replicas claim a
-- hostname here before they order from the CA, so two of them never order the same one at
-- once (the other waits for the certificate the holder stores in `certificates`). A claim
-- lapses at `expires_at` (a crashed ingress blocks no one for long) and is removed when its
-- holder stores the certificate.
CREATE TABLE certificate_orders (
    hostname   TEXT PRIMARY KEY,
    node_id    BIGINT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL
);
