"""Alembic environment of the coordinator's state database.

Run programmatically (`ehds.coordinator.state.database`), which hands an open connection in
``config.attributes["connection"]``; there is no alembic.ini. Offline (SQL script) mode is not
supported: the coordinator migrates its own database at start.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from ehds.coordinator.state.models import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "run the coordinator's migrations through `ehds coordinator migrate` (it passes the "
        "database connection); alembic's command line is not configured for them"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: later migrations rebuild tables in batch mode.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
