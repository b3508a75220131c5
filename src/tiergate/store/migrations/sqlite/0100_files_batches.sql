-- Files and batches (SQLite). Keep in step with ../postgresql/0100_files_batches.sql.
-- Owned by tiergate.batches; timestamps are UTC epoch seconds.

CREATE TABLE files (
    id          TEXT PRIMARY KEY,
    key_id      TEXT,
    filename    TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL,
    content     BLOB NOT NULL
);
CREATE INDEX files_key ON files (key_id, created_at);

CREATE TABLE batches (
    id                TEXT PRIMARY KEY,
    key_id            TEXT,
    endpoint          TEXT NOT NULL,
    input_file_id     TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status            TEXT NOT NULL,
    mode              TEXT NOT NULL DEFAULT 'local',
    upstream          TEXT,
    metadata          TEXT,
    errors            TEXT,
    output_file_id    TEXT,
    error_file_id     TEXT,
    total             INTEGER NOT NULL DEFAULT 0,
    created_at        REAL NOT NULL,
    in_progress_at    REAL,
    expires_at        REAL,
    finalizing_at     REAL,
    completed_at      REAL,
    failed_at         REAL,
    expired_at        REAL,
    cancelling_at     REAL,
    cancelled_at      REAL,
    lease_owner       TEXT,
    lease_until       REAL
);
CREATE INDEX batches_status ON batches (status);
CREATE INDEX batches_key ON batches (key_id, created_at);

CREATE TABLE batch_lines (
    batch_id         TEXT NOT NULL,
    line_no          INTEGER NOT NULL,
    custom_id        TEXT NOT NULL,
    body             TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending',
    owner            TEXT,
    claim            TEXT,
    lease_until      REAL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    status_code      INTEGER,
    result           TEXT,
    input_tokens     INTEGER NOT NULL DEFAULT 0,
    cached_tokens    INTEGER NOT NULL DEFAULT 0,
    output_tokens    INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    updated_at       REAL,
    PRIMARY KEY (batch_id, line_no)
);
CREATE INDEX batch_lines_state ON batch_lines (batch_id, state, line_no);
CREATE INDEX batch_lines_claim ON batch_lines (claim);
CREATE INDEX batch_lines_owner ON batch_lines (owner, state);
