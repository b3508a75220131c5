-- Stored Responses (postgresql). Keep in step with ../sqlite/0200_responses.sql.
-- Owned by tiergate.store.responses (GET/DELETE /v1/responses/{id}, input_items, previous_response_id).
-- JSON columns are text; timestamps are UTC epoch seconds. No secrets: the key id, never the key.

CREATE TABLE responses (
    id                   TEXT PRIMARY KEY,
    key_id               TEXT,
    created_at           DOUBLE PRECISION NOT NULL,
    model                TEXT,
    path                 TEXT NOT NULL,
    previous_response_id TEXT,
    instructions         TEXT,
    input_items          TEXT NOT NULL,
    response             TEXT NOT NULL
);
CREATE INDEX responses_key ON responses (key_id, created_at);
