"""Schema migrations: numbered SQL files per dialect, applied in order, recorded in `schema_migrations`.

Layout: `store/migrations/<dialect>/NNNN_description.sql` for dialect `sqlite` and `postgresql`. Each
file runs once, in one transaction, in ascending NNNN order; its number is then recorded in the
`schema_migrations` table (version, name, applied_at). To change the schema, add a new file with the
next number to *both* dialect folders — never edit an applied file. Numbers 0001-0099 belong to the
accounting store (keys, ledger, budgets); 0100-0199 to files/batches; 0200+ to stored responses;
leave gaps for other features.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^(\d{4})_[A-Za-z0-9_]+\.sql$")

CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """All migration files shipped for `dialect`, in order. Refuses duplicate numbers."""
    folder = resources.files("tiergate.store") / "migrations" / dialect
    found: list[Migration] = []
    for entry in folder.iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), entry.name, entry.read_text()))
    found.sort(key=lambda x: x.version)
    for a, b in itertools.pairwise(found):
        if a.version == b.version:
            raise RuntimeError(f"two migrations numbered {a.version:04d}: {a.name} and {b.name}")
    return found
