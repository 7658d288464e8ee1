"""Shared pytest fixtures.

PostgreSQL: tests/run.sh starts a throw-away server on 127.0.0.1 and exports
EHDS_TEST_POSTGRES_URL (role `ehds`, which owns database `ehds_test` and has CREATEDB).
Without it the PostgreSQL fixtures skip the test, except in CI (CI=true), where they fail it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import URL, make_url

pytest_plugins = ["area_budgets"]

POSTGRES_URL_ENV = "EHDS_TEST_POSTGRES_URL"
POSTGRES_ADMIN_URL_ENV = "EHDS_TEST_POSTGRES_ADMIN_URL"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def _libpq_conninfo(url: URL) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as a libpq connection string for psycopg."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _unique_database_name(test_name: str) -> str:
    """`ehds_t_<test name>_<random>`: unique, a valid identifier, under PostgreSQL's 63 bytes."""
    slug = re.sub(r"[^a-z0-9]+", "_", test_name.lower()).strip("_")[:30]
    return f"ehds_t_{slug}_{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """SQLAlchemy URL of the test server's `ehds_test` database (owner `ehds`)."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        message = "PostgreSQL not started: run tests/run.sh, which starts a throw-away server"
        if _in_ci():
            pytest.fail(f"{message} ({POSTGRES_URL_ENV} is unset and CI=true)")
        pytest.skip(message)
    return url


@pytest.fixture
def fresh_postgres_url(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """SQLAlchemy URL of a brand-new, empty database, dropped after the test."""
    base = make_url(postgres_url)
    name = _unique_database_name(request.node.name)
    with psycopg.connect(_libpq_conninfo(base), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        # As the superuser where tests/run.sh gives one: FORCE terminates the connections the
        # test left open (e.g. an undisposed pool), and an autovacuum worker that happens to be
        # in the new database belongs to a role `ehds` may not signal.
        admin = os.environ.get(POSTGRES_ADMIN_URL_ENV)
        owner = make_url(admin) if admin else base
        with psycopg.connect(_libpq_conninfo(owner), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
