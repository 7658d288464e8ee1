"""One contract, three engines: what every `IbisCdm` must do, run on DuckDB, PostgreSQL and
Spark (local mode) over the same synthetic CDM.

Each engine is built the way the node builds it: a factory that gives a fresh `IbisCdm` per
task (`SharedDuckDb`, `open_postgres`, `SharedSpark`), opened on first use and closed after.
"""

from __future__ import annotations

import gc
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import ibis.expr.types as ir
import psycopg
import pytest
from ibis.common.exceptions import TableNotFound
from psycopg import sql
from sqlalchemy.engine import make_url

from ehds.analyses.base import TaskCancelledError
from ehds.analyses.engine import (
    EngineKind,
    IbisCdm,
    RowLimitExceededError,
    SharedDuckDb,
    open_postgres,
)
from ehds.omop.database import CdmDatabase
from ehds.omop.loader import load_cdm

Factory = Callable[[], IbisCdm]

SPARK_SOCKETS = pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
"""PySpark 4.0 leaves the local socket of every result it fetches (``collect``, ``toArrow``) to
the garbage collector, which warns; pytest turns warnings into errors. Spark's tests ignore
that one warning, and `forget_spark_sockets` collects the leftovers when Spark stops, so that
none warns during a later test."""


def forget_spark_sockets() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "unclosed <socket.socket", ResourceWarning)
        gc.collect()


FACTORIES = {"duckdb": "duckdb_factory", "postgresql": "postgres_factory", "spark": "spark_factory"}

INTERRUPT_WITHIN_S = 30.0

LONG_QUERIES = {
    EngineKind.DUCKDB: "SELECT count(*) AS n FROM range(100000000000) AS t(i) WHERE i % 7 = 3",
    EngineKind.POSTGRESQL: "SELECT count(*) AS n FROM generate_series(1, 100000000000) AS i "
    "WHERE i % 7 = 3",
    EngineKind.SPARK: "SELECT count(*) AS n FROM range(1000000000000) WHERE id % 7 = 3",
}


@pytest.fixture(scope="module")
def duckdb_factory(cdm_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    results = tmp_path_factory.mktemp("duckdb-results") / "node-results.duckdb"
    shared = SharedDuckDb(cdm_file, results, ("cdm", "vocab", "results"))
    yield shared.task_engine
    shared.close()


@pytest.fixture(scope="module")
def postgres_factory(postgres_url: str, cdm_file: Path) -> Iterator[Factory]:
    """The synthetic CDM loaded into a database of its own, dropped after the module."""
    base = make_url(postgres_url)
    name = f"ehds_t_engines_{time.time_ns()}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        db = CdmDatabase.parse(base.set(database=name).render_as_string(hide_password=False))
        load_cdm(cdm_file, db)
        yield lambda: open_postgres(db.libpq_conninfo, schemas=("cdm", "vocab", "results"))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="module")
def spark_factory(
    java: None, parquet_cdm: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Factory]:
    from ehds.analyses.spark_engine import SparkSettings, spark_session

    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    with spark_session(SparkSettings(parquet=parquet_cdm, warehouse=warehouse)) as shared:
        yield shared.task_engine
    forget_spark_sockets()


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("duckdb"),
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("spark", marks=[pytest.mark.slow, SPARK_SOCKETS]),
    ],
)
def factory(request: pytest.FixtureRequest) -> Factory:
    fixture: Factory = request.getfixturevalue(FACTORIES[request.param])
    return fixture


@pytest.fixture
def engine(factory: Factory) -> Iterator[IbisCdm]:
    cdm = factory()
    try:
        yield cdm
    finally:
        cdm.close()


def test_tables_are_the_cdm_and_vocabulary(engine: IbisCdm, truth: dict[str, int]) -> None:
    assert engine.scalar(engine.table("person").count()) == truth["person"]
    assert engine.scalar(engine.table("concept").count()) == truth["concept"]
    assert engine.scalar(engine.table("measurement").count()) == truth["measurement"]
    person = engine.table("person")
    rows = engine.collect(
        person.group_by("gender_concept_id").aggregate(n=person.count()), max_rows=10
    )
    assert {f"gender:{r['gender_concept_id']}": r["n"] for r in rows} == {
        k: v for k, v in truth.items() if k.startswith("gender:")
    }


def test_collect_refuses_more_rows_than_the_aggregate_has(engine: IbisCdm) -> None:
    person = engine.table("person")
    by_gender = person.group_by("gender_concept_id").aggregate(n=person.count())
    groups = engine.scalar(person.gender_concept_id.nunique())
    assert groups >= 2
    before = engine.rows_collected
    with pytest.raises(RowLimitExceededError, match="more than the 1 aggregate rows"):
        engine.collect(by_gender, max_rows=1)
    assert engine.rows_collected == before  # a refused result is not handed over
    assert len(engine.collect(by_gender, max_rows=groups)) == groups
    assert engine.rows_collected == before + groups


def test_results_tables_are_created_and_dropped(engine: IbisCdm, truth: dict[str, int]) -> None:
    name = engine.scratch_name("contract")
    person = engine.table("person")
    women = person.filter(person.gender_concept_id == 8532).select("person_id")
    created = engine.create_results_table(name, women)
    assert engine.scalar(created.count()) == truth["gender:8532"]
    # Replacing a table of the same name (a re-run) works on every engine.
    engine.create_results_table(name, women.limit(3))
    assert engine.scalar(engine.results_table(name).count()) == 3
    engine.drop_results_table(name)
    with pytest.raises(TableNotFound):
        engine.results_table(name)
    engine.drop_results_table(name)  # dropping twice is fine


# Ibis 12 calls DuckDB's deprecated fetch_arrow_table() to learn the schema of raw SQL.
@pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")
def test_an_interrupt_stops_a_long_query(engine: IbisCdm) -> None:
    failure: list[BaseException] = []
    started = threading.Event()

    def run() -> None:
        # Opened on this thread, as a task opens it (Spark's job group is per thread).
        long_query: ir.Table = engine.backend.sql(LONG_QUERIES[engine.kind])
        started.set()
        try:
            engine.collect(long_query, max_rows=1)
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    began = time.monotonic()
    worker.start()
    assert started.wait(INTERRUPT_WITHIN_S)
    time.sleep(0.3)
    # An interrupt that lands before the statement starts is lost (DuckDB): repeat it.
    while worker.is_alive() and time.monotonic() - began < INTERRUPT_WITHIN_S:
        engine.interrupt()
        worker.join(0.5)
    assert not worker.is_alive(), "the query ran on after the interrupt"
    assert failure, "the interrupted query returned a result"


def test_an_engine_interrupted_before_use_never_opens(factory: Factory) -> None:
    engine = factory()
    engine.interrupt()
    with pytest.raises(TaskCancelledError):
        engine.table("person")
    assert not engine.is_open
    engine.close()


@pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")
def test_one_task_interrupted_leaves_another_running(duckdb_factory: Factory) -> None:
    """Tasks share DuckDB's connection, each on a cursor: an interrupt stops one task only."""
    slow, other = duckdb_factory(), duckdb_factory()
    try:
        failure: list[BaseException] = []

        def run() -> None:
            try:
                slow.collect(slow.backend.sql(LONG_QUERIES[EngineKind.DUCKDB]), max_rows=1)
            except BaseException as exc:
                failure.append(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        time.sleep(0.3)
        deadline = time.monotonic() + INTERRUPT_WITHIN_S
        while worker.is_alive() and time.monotonic() < deadline:
            slow.interrupt()
            worker.join(0.5)
        assert failure
        assert not worker.is_alive()
        assert other.scalar(other.table("person").count()) > 0
    finally:
        slow.close()
        other.close()
