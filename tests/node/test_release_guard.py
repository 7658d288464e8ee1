"""The differencing guard (`ehds.node.release_guard`) on a synthetic CDM in DuckDB.

Populations are person-id ranges of the CDM's ``person`` table, built as Ibis expressions, so
the guard sees what an analysis hands it: a table expression inside the engine. Threshold 5
throughout: differences of 1 to 4 persons are refused, 0 and 5+ are allowed.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import ibis.expr.types as ir
import pytest

from ehds.analyses.base import ComputeContext, DisclosureRefusedError
from ehds.analyses.engine import EngineKind, IbisCdm, cdm_session, duckdb_session
from ehds.federation.limits import MAX_OUTCOME_MESSAGE_CHARS
from ehds.node.release_guard import (
    DIFFERENCING_RULE,
    RELEASED_POPULATIONS_TABLE,
    NodeReleaseGuard,
    ReleaseLocks,
)
from ehds.node.runner import disclosure_message
from ehds.omop.database import CdmDatabase
from ehds.omop.parquet_layout import export_layout
from ehds.omop.synth import SynthOptions, generate

T = 5
PERSONS = 300


@pytest.fixture(scope="module")
def cdm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cdm") / "synth.duckdb"
    generate(CdmDatabase.parse(str(path)), SynthOptions(persons=PERSONS, seed=5))
    return path


@pytest.fixture
def engine(cdm_file: Path, tmp_path: Path) -> Iterator[IbisCdm]:
    with duckdb_session(cdm_file, tmp_path / "node-results.duckdb") as cdm:
        yield cdm


def persons(engine: IbisCdm, first: int, last: int) -> ir.Table:
    """The persons ranked ``first`` to ``last`` (1-based, inclusive) by person_id."""
    person = engine.table("person")
    ranked = person.select("person_id").mutate(rank=ibis_row_number(person))
    return ranked.filter((ranked["rank"] >= first) & (ranked["rank"] <= last)).select("person_id")


def ibis_row_number(person: ir.Table) -> ir.IntegerColumn:
    import ibis

    return ibis.row_number().over(order_by=person.person_id) + 1


def guard(permit: str = "permit-1", researcher: str = "alice") -> NodeReleaseGuard:
    return NodeReleaseGuard(permit, researcher, T, locks=ReleaseLocks())


def stored(engine: IbisCdm) -> int:
    table = engine.results_table(RELEASED_POPULATIONS_TABLE)
    [row] = engine.collect(table.aggregate(n=table.count()), max_rows=1)
    return int(row["n"])


def refused(engine: IbisCdm, g: NodeReleaseGuard, population: ir.Table) -> DisclosureRefusedError:
    with pytest.raises(DisclosureRefusedError) as failure:
        g.check_population(engine, population, fingerprint="fp")
    return failure.value


def test_an_identical_re_run_passes_and_is_stored_once(engine: IbisCdm) -> None:
    g = guard()
    g.check_population(engine, persons(engine, 1, 100), fingerprint="cohort-a")
    assert stored(engine) == 100
    g.check_population(engine, persons(engine, 1, 100), fingerprint="cohort-a")
    # The same persons under another definition are the same population.
    g.check_population(engine, persons(engine, 1, 100), fingerprint="cohort-b")
    assert stored(engine) == 100


@pytest.mark.parametrize("difference", range(1, T))
def test_a_population_differing_by_1_to_t_minus_1_persons_is_refused(
    engine: IbisCdm, difference: int
) -> None:
    g = guard()
    g.check_population(engine, persons(engine, 1, 100), fingerprint="all")
    refused(engine, g, persons(engine, 1, 100 - difference))  # fewer persons
    refused(engine, g, persons(engine, 1, 100 + difference))  # more persons
    assert stored(engine) == 100  # nothing refused is remembered


def test_the_difference_is_symmetric_not_a_difference_of_sizes(engine: IbisCdm) -> None:
    g = guard()
    g.check_population(engine, persons(engine, 1, 100), fingerprint="a")
    # Same size, two persons swapped for two others: 4 persons differ.
    error = refused(engine, g, persons(engine, 3, 102))
    assert error.rule == DIFFERENCING_RULE


def test_a_population_differing_by_t_or_more_passes_and_is_remembered(engine: IbisCdm) -> None:
    g = guard()
    g.check_population(engine, persons(engine, 1, 100), fingerprint="a")
    g.check_population(engine, persons(engine, 1, 100 - T), fingerprint="b")
    g.check_population(engine, persons(engine, 1, 100 + T), fingerprint="c")
    assert stored(engine) == 100 + (100 - T) + (100 + T)
    # 1..100-T-2 differs from every release by >= T, except from release b by 2: refused.
    refused(engine, g, persons(engine, 1, 100 - T - 2))
    # A re-run of any one of the releases is fine.
    g.check_population(engine, persons(engine, 1, 100 - T), fingerprint="b")


def test_releases_are_remembered_per_permit_and_researcher(engine: IbisCdm) -> None:
    guard("permit-1", "alice").check_population(engine, persons(engine, 1, 100), fingerprint="a")
    # Another researcher, or the same researcher under another permit, starts afresh.
    guard("permit-1", "bob").check_population(engine, persons(engine, 1, 98), fingerprint="a")
    guard("permit-2", "alice").check_population(engine, persons(engine, 1, 98), fingerprint="a")
    refused(engine, guard("permit-1", "alice"), persons(engine, 1, 98))
    refused(engine, guard("permit-1", "bob"), persons(engine, 1, 100))
    # Names cannot be made to collide by moving a separator between permit and researcher.
    guard("permit-1a", "lice").check_population(engine, persons(engine, 1, 98), fingerprint="a")


def test_a_refusal_names_rule_and_threshold_never_the_difference(engine: IbisCdm) -> None:
    g = guard()
    g.check_population(engine, persons(engine, 1, 100), fingerprint="a")
    error = refused(engine, g, persons(engine, 1, 97))
    assert error.rule == DIFFERENCING_RULE
    assert error.message == str(error)
    assert "fewer than 5 persons" in error.message
    assert set(re.findall(r"\d+", error.message)) == {str(T)}  # no 3, no 97, no 100


def test_the_refusal_fits_in_an_outcome_message(engine: IbisCdm) -> None:
    """The node sends the refusal's text as the task outcome: it must fit the protocol's limit
    even with a large threshold."""
    g = NodeReleaseGuard("permit-1", "alice", 1000, locks=ReleaseLocks())
    g.check_population(engine, persons(engine, 1, 100), fingerprint="a")
    error = refused(engine, g, persons(engine, 1, 98))
    text = disclosure_message(error)
    assert text.startswith("refused by disclosure rule differencing: ")
    assert len(text) <= MAX_OUTCOME_MESSAGE_CHARS


def test_the_memory_survives_a_new_session_and_only_counts_come_back(
    cdm_file: Path, tmp_path: Path
) -> None:
    results = tmp_path / "node-results.duckdb"
    with duckdb_session(cdm_file, results) as engine:
        guard().check_population(engine, persons(engine, 1, 200), fingerprint="a")
        assert engine.rows_collected == 1  # one verdict row; no person ids
    with duckdb_session(cdm_file, results) as engine:
        refused(engine, guard(), persons(engine, 1, 199))
        assert engine.rows_collected == 1


def test_the_guard_runs_through_the_compute_context(engine: IbisCdm) -> None:
    ctx = ComputeContext(cdm=None, min_cell_count=T, engine=engine, release_guard=guard())
    ctx.check_population(persons(engine, 1, 50), fingerprint="a")
    with pytest.raises(DisclosureRefusedError):
        ctx.check_population(persons(engine, 1, 51), fingerprint="b")


def test_concurrent_tasks_of_one_key_cannot_both_pass(cdm_file: Path, tmp_path: Path) -> None:
    """Two tasks, populations 2 persons apart, checked at once on their own connections: the
    lock per key lets exactly one of them through."""
    results = tmp_path / "node-results.duckdb"
    locks = ReleaseLocks()
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def task(last: int) -> None:
        with duckdb_session(cdm_file, results) as engine:
            population = persons(engine, 1, last)
            start.wait(10)
            try:
                NodeReleaseGuard("permit-1", "alice", T, locks=locks).check_population(
                    engine, population, fingerprint=str(last)
                )
                outcomes.append("passed")
            except DisclosureRefusedError:
                outcomes.append("refused")

    with duckdb_session(cdm_file, results) as engine:
        # The table exists before the race: what is tested is the check-and-record per key.
        guard("another-permit").check_population(engine, persons(engine, 1, 10), fingerprint="x")
    threads = [threading.Thread(target=task, args=(last,)) for last in (100, 102)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["passed", "refused"]


def test_a_threshold_below_one_is_a_bug() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        NodeReleaseGuard("p", "r", 0)


@pytest.mark.postgres
def test_the_guard_works_on_postgresql(fresh_postgres_url: str) -> None:
    """The same checks in PostgreSQL (the table in the results schema, the comparison in SQL)."""
    db = CdmDatabase.parse(fresh_postgres_url)
    generate(db, SynthOptions(persons=PERSONS, seed=5))
    with cdm_session(db) as engine:
        assert engine.kind is EngineKind.POSTGRESQL
        g = guard()
        g.check_population(engine, persons(engine, 1, 100), fingerprint="a")
        g.check_population(engine, persons(engine, 1, 100), fingerprint="a")
        assert stored(engine) == 100
        error = refused(engine, g, persons(engine, 3, 102))
        assert error.rule == DIFFERENCING_RULE
        g.check_population(engine, persons(engine, 1, 100 + T), fingerprint="b")
        guard(researcher="bob").check_population(engine, persons(engine, 1, 98), fingerprint="a")
        assert stored(engine) == 100 + 100 + T + 98
    with cdm_session(db) as engine:  # remembered across connections
        refused(engine, guard(), persons(engine, 1, 99))


@pytest.mark.slow
# py4j leaves its gateway sockets to the garbage collector (not ours to close).
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)
def test_the_guard_works_on_spark_and_remembers_across_restarts(
    cdm_file: Path, tmp_path: Path
) -> None:
    """Spark local mode over the Parquet layout: the memory is a table of the node's warehouse,
    registered again when Spark starts again."""
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java 17+; tests/run.sh installs it")
    from ehds.analyses.spark_engine import SparkSettings, spark_session

    layout = tmp_path / "cdm"
    export_layout(CdmDatabase.parse(str(cdm_file)), layout)
    settings = SparkSettings(parquet=layout, warehouse=tmp_path / "warehouse")
    with spark_session(settings) as shared:
        engine = shared.task_engine()
        try:
            g = guard()
            g.check_population(engine, persons(engine, 1, 100), fingerprint="a")
            g.check_population(engine, persons(engine, 1, 100), fingerprint="a")
            refused(engine, g, persons(engine, 3, 102))
            assert stored(engine) == 100
        finally:
            engine.close()
    with spark_session(settings) as shared:
        engine = shared.task_engine()
        try:
            refused(engine, guard(), persons(engine, 1, 98))
            guard().check_population(engine, persons(engine, 1, 100 + T), fingerprint="b")
            assert stored(engine) == 100 + 100 + T
        finally:
            engine.close()
