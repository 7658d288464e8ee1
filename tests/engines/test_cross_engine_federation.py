"""One study, three engines, one answer: the live federation with a DuckDB, a PostgreSQL and a
Spark node that hold the SAME synthetic CDM (same profile, seed and person ids) must release
identical node results for every analysis.

Each node is a real `ehds node serve` process configured as an operator would (node.yaml:
`cdm.url` for DuckDB and PostgreSQL, `cdm.spark` for the Parquet layout). The analyses are
written once in Ibis; a difference here means an expression compiles to different semantics on
one backend. Every study is also checked for what reached Python: each node logs, per task, the
rows its analysis collected from the engine beside the rows it released, and the first never
exceeds the second (no row-level data left the engine).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from ehds.cli.demo_command import wait_for_nodes
from ehds.cli.local_federation import PERMIT_ID, LocalFederation, prepare, running
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import load_client_config
from ehds.federation.model import AnalysisRef, StudySpec, StudyState

# PySpark 4.0 leaves the local socket of each result it fetches to the garbage collector,
# which warns; pytest turns warnings into errors. Only the Spark node's driver (another
# process) fetches results here, but the study client's objects may hold none: be safe.
SPARK_SOCKETS = pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")

pytestmark = [pytest.mark.slow, pytest.mark.postgres, SPARK_SOCKETS]

ENGINES = ("duckdb", "postgresql", "spark")
PERSONS = 1500
MIN_CELL = 5
WAIT_S = 300

HYPERTENSION = 320128
WEIGHT = 3025315


def _hypertension(exit_rule: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "hypertension",
        "yaml": {
            "concept_sets": {
                "hypertension": {"include": [{"concept": HYPERTENSION, "descendants": True}]}
            },
            "entry": {"events": [{"condition": "hypertension"}], "first_occurrence": True},
            "exit": exit_rule,
        },
    }


STUDIES: dict[str, dict[str, Any]] = {
    "person_count": {"age_band_edges": [0, 18, 45, 65], "reference_year": 2025},
    "counts": {"strata": ["sex", "age_band", "calendar_year"]},
    "characterization": {"cohort": _hypertension({"end_of_observation": True}), "top_n": 10},
    "incidence": {
        "outcome": _hypertension({"days_after_start": 0}),
        "start": "2015-01-01",
        "end": "2018-12-31",
        "washout_days": 365,
        "age_band_edges": [0, 50],
    },
    "prevalence": {
        "outcome": _hypertension({"end_of_observation": True}),
        "start": "2016-01-01",
        "end": "2020-12-31",
        "age_band_edges": [0, 45, 65],
    },
    "numeric_summary": {
        "name": "body weight",
        "concept_ids": [WEIGHT],
        "lower": 0,
        "upper": 200,
        "width": 2.5,
        "quantiles": [0.1, 0.25, 0.5, 0.75, 0.9],
    },
}

ROWS_LOGGED = re.compile(
    r"task (?P<task>\S+): rows collected from the engine: (?P<analysis>\d+) by the analysis, "
    r"(?P<guard>\d+) by the release guard; (?P<released>\d+) released"
)


@pytest.fixture(scope="module")
def documents(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[tuple[LocalFederation, dict[str, dict[str, Any]]]]:
    database = _fresh_database(postgres_url)
    root = tmp_path_factory.mktemp("cross-engine")
    try:
        fed = prepare(
            root / "fed",
            countries=ENGINES,
            persons=PERSONS,
            cdm_profile="fr",
            engines={f"node-{engine}": engine for engine in ENGINES},
            postgres_urls={"node-postgresql": database},
            analyses=[(name, "1.0.0") for name in STUDIES],
            min_cell_count=MIN_CELL,
        )
        fed.verbose_nodes = True  # the rows-collected line is logged at INFO
        with running(fed) as started:
            wait_for_nodes(started.operator_config, list(started.nodes), 60)
            with CoordinatorClient(load_client_config(started.researcher_config)) as client:
                ids = {
                    name: client.submit(
                        StudySpec(
                            title=f"cross-engine {name}",
                            analysis=AnalysisRef(name, "1.0.0"),
                            parameters=json.dumps(parameters).encode(),
                            min_nodes=len(ENGINES),
                            deadline_seconds=WAIT_S,
                            data_permit_id=PERMIT_ID,
                        )
                    ).id
                    for name, parameters in STUDIES.items()
                }
                results = {}
                for name, study_id in ids.items():
                    state = client.wait(study_id, timeout=WAIT_S).state
                    assert state == StudyState.COMPLETED, (name, state, _logs(started))
                    results[name] = client.results(study_id)
            yield started, results
    finally:
        _drop_database(postgres_url, database)


def _fresh_database(postgres_url: str) -> str:
    base = make_url(postgres_url)
    name = f"ehds_t_cross_engine_{uuid.uuid4().hex[:12]}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return base.set(database=name).render_as_string(hide_password=False)


def _drop_database(postgres_url: str, url: str) -> None:
    admin = make_url(postgres_url).set(drivername="postgresql")
    name = make_url(url).database
    assert name is not None
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))


def _logs(fed: LocalFederation) -> str:
    return "\n".join(
        f"--- {name}\n" + "\n".join(p.log_text().splitlines()[-15:])
        for name, p in fed.processes.items()
    )


def _same(a: Any, b: Any, where: str) -> None:
    """Equal, except floats that may differ in the last bits (sums in another order)."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, int | float), where
        assert isinstance(b, int | float), where
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (where, a, b)
    elif isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), (where, len(a), len(b))
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{index}]")
    else:
        assert a == b, (where, a, b)


@pytest.mark.parametrize("analysis", list(STUDIES))
def test_three_engines_release_identical_results(
    documents: tuple[LocalFederation, dict[str, dict[str, Any]]], analysis: str
) -> None:
    _, results = documents
    by_node = {entry["node"]: entry["result"] for entry in results[analysis]["nodes"]}
    assert sorted(by_node) == sorted(f"node-{engine}" for engine in ENGINES)
    reference = by_node["node-duckdb"]
    assert reference, "the DuckDB node released nothing"
    for engine in ("postgresql", "spark"):
        _same(reference, by_node[f"node-{engine}"], f"{analysis}@{engine}")


def test_no_row_level_data_reaches_python(
    documents: tuple[LocalFederation, dict[str, dict[str, Any]]],
) -> None:
    fed, _ = documents
    for name, process in fed.processes.items():
        if name == "coordinator":
            continue
        tasks = list(ROWS_LOGGED.finditer(process.log_text()))
        assert len(tasks) >= len(STUDIES), (name, len(tasks))
        for task in tasks:
            assert int(task["analysis"]) <= int(task["released"]), (name, task.group(0))
