-- Gateway-wide settings every replica reads at start-up (name -> value). First use: the fingerprint of the
-- API-key pepper (`key_pepper_fingerprint`, accounting/keys.py), never the pepper itself.
CREATE TABLE gateway_settings (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
);
