-- File expiry and list cursors of deleted objects (SQLite). Keep in step with
-- ../postgresql/0101_file_expiry_list_tombstones.sql. Owned by tiergate.batches.store.

-- `files.expires_at` (from 0100) is now set by `expires_after` / a batch's `output_expires_after`;
-- expired files read as absent and are purged periodically.
CREATE INDEX files_expires ON files (expires_at) WHERE expires_at IS NOT NULL;

-- A batch's `output_expires_after.seconds`, applied to its output and error files when they are written.
ALTER TABLE batches ADD COLUMN output_expires_s INTEGER;

-- One row per deleted (or purged) file: an `after` cursor naming it still positions a list page.
-- `object` is the table the row came from; kept for a day (`TOMBSTONE_KEEP_S`).
CREATE TABLE list_tombstones (
    id          TEXT PRIMARY KEY,
    object      TEXT NOT NULL,
    key_id      TEXT,
    created_at  REAL NOT NULL,
    deleted_at  REAL NOT NULL
);
CREATE INDEX list_tombstones_deleted ON list_tombstones (deleted_at);
