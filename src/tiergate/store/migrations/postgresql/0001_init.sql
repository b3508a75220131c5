-- tiergate schema v1 (PostgreSQL). Keep in step with ../sqlite/0001_init.sql.
-- Timestamps are UTC epoch seconds (DOUBLE PRECISION) in both dialects, so reports group the same way.

CREATE TABLE ledger (
    request_id       TEXT PRIMARY KEY,
    ts               DOUBLE PRECISION NOT NULL,
    key_id           TEXT,
    kind             TEXT NOT NULL DEFAULT 'chat',
    requested_model  TEXT,
    served_model     TEXT,
    deployment       TEXT,
    reasoning_effort TEXT,
    input_tokens     INTEGER NOT NULL DEFAULT 0,
    cached_tokens    INTEGER NOT NULL DEFAULT 0,
    output_tokens    INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd         DOUBLE PRECISION NOT NULL DEFAULT 0,
    latency_ms       DOUBLE PRECISION,
    ttft_ms          DOUBLE PRECISION,
    status           TEXT NOT NULL,
    error            TEXT,
    route            TEXT,
    stream           BOOLEAN NOT NULL DEFAULT FALSE,
    attempt          INTEGER NOT NULL DEFAULT 0,
    batch_id         TEXT,
    metadata         TEXT
);
CREATE INDEX ledger_key_ts ON ledger (key_id, ts) INCLUDE (cost_usd);
CREATE INDEX ledger_ts ON ledger (ts);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    prefix        TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    budget_usd    DOUBLE PRECISION,
    budget_period TEXT NOT NULL DEFAULT 'none',
    rpm           BIGINT,
    tpm           BIGINT,
    models        TEXT,
    metadata      TEXT,
    cache         BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    DOUBLE PRECISION NOT NULL,
    revoked_at    DOUBLE PRECISION
);

-- Budget counters for the store-backed budget (PostgreSQL without Redis): spent money and outstanding
-- reservations per key and period, in integer nano-dollars (exact sums). Reservations are rows with an
-- expiry so a crashed replica's holds lapse instead of leaking.
CREATE TABLE budget_usage (
    key_id      TEXT NOT NULL,
    period      TEXT NOT NULL,
    spent_nusd  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, period)
);
CREATE TABLE budget_reservations (
    id          TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL,
    period      TEXT NOT NULL,
    amount_nusd BIGINT NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX budget_reservations_key ON budget_reservations (key_id, period, expires_at);
