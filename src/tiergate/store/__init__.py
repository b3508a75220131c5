"""Persistence: SQLite (embedded default) or PostgreSQL through one schema; Redis for shared state."""
