"""Alembic environment of the node's state database.

The node runs these migrations itself at start (`ehds.node.state.NodeState.open`, which passes
its open connection in ``config.attributes["connection"]``). To write a new migration after
changing `ehds.node.state_schema`, bring a scratch database to the current head (open it with
`NodeState.open`) and let Alembic compare it with the models:

    printf '[alembic]\nscript_location = node/ehds/node/migrations\n'\
    'file_template = r%%%%(rev)s_%%%%(slug)s\n' > /tmp/node-alembic.ini
    alembic -c /tmp/node-alembic.ini -x url=sqlite:////tmp/scratch.db \
        revision --autogenerate --rev-id 0002 -m "what changed"

(file names start with a letter so that they are valid module names for the linters).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from ehds.node.state_schema import metadata

config = context.config


def _run(connection: sa.Connection) -> None:
    # Batch mode: SQLite cannot ALTER most things in place; Alembic copies the table instead.
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


_connection = config.attributes.get("connection")
if isinstance(_connection, sa.Connection):
    _run(_connection)
else:
    _url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not _url:
        raise SystemExit("give the state database as -x url=sqlite:///PATH")
    _engine = sa.create_engine(_url)
    try:
        with _engine.begin() as _conn:
            _run(_conn)
    finally:
        _engine.dispose()
