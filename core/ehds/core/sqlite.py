"""SQLite settings for the small state databases of the coordinator and the node.

Both keep promises in SQLite (a task acknowledged, a result receipted), so both need the same
durability: write-ahead logging, a full sync at every commit (a receipt must survive a power
cut, not only a process crash), and enforced foreign keys. One definition, so the two cannot
drift apart.
"""

from __future__ import annotations

from typing import Any


def apply_state_pragmas(dbapi_connection: Any) -> None:
    """Set WAL, synchronous=FULL and foreign keys on a new sqlite3 connection."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()
