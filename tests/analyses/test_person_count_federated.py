"""`person_count` federated equals `person_count` pooled, on DuckDB and PostgreSQL.

Three synthetic CDMs (FR, FI, DK profiles, distinct id offsets) stand for three nodes. The
reference is hand-written SQL over the union of their person tables, run in one DuckDB
connection that attaches the three files: no code of the analysis is involved in it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa

from ehds.analyses.base import ComputeContext, JsonObject
from ehds.analyses.engine import cdm_session
from ehds.analyses.person_count import PersonCount, PersonCountParameters
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate

NODES = {"dk": 3_000_000, "fi": 2_000_000, "fr": 1_000_000}  # node (= profile) -> id_offset
PERSONS = 600

Cell = tuple[str, str]


@pytest.fixture(scope="module")
def node_cdms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CdmDatabase]:
    folder = tmp_path_factory.mktemp("nodes")
    cdms = {}
    for node, offset in NODES.items():
        cdm = CdmDatabase.parse(str(folder / f"node_{node}.duckdb"))
        generate(cdm, SynthOptions(persons=PERSONS, seed=7, profile=node, id_offset=offset))
        cdms[node] = cdm
    return cdms


def _federated(
    cdms: Mapping[str, CdmDatabase], params: PersonCountParameters, min_cell_count: int
) -> tuple[dict[str, JsonObject], JsonObject]:
    analysis = PersonCount()
    released = {node: _compute(analysis, params, cdm, min_cell_count) for node, cdm in cdms.items()}
    return released, analysis.aggregate(params, released)


def _compute(
    analysis: PersonCount, params: PersonCountParameters, cdm: CdmDatabase, min_cell_count: int
) -> JsonObject:
    with cdm_session(cdm) as engine:
        return analysis.compute(
            params, ComputeContext(cdm=None, min_cell_count=min_cell_count, engine=engine)
        )


def _case_bands(edges: Sequence[int], reference_year: int) -> str:
    """The band CASE written out independently of the analysis' own labels and SQL."""
    age = f"({reference_year} - year_of_birth)"
    whens = [f"WHEN {age} < {hi} THEN '{lo}-{hi - 1}'" for lo, hi in itertools.pairwise(edges)]
    if not whens:
        return f"'{edges[-1]}+'"
    return f"CASE {' '.join(whens)} ELSE '{edges[-1]}+' END"


def _pooled_truth(cdms: Mapping[str, CdmDatabase], band_case: str, year: int) -> dict[Cell, int]:
    with duckdb.connect() as con:
        unions = []
        for node, cdm in cdms.items():
            con.execute(f"ATTACH '{cdm.duckdb_path}' AS n_{node} (READ_ONLY)")
            unions.append(
                f"SELECT person_id, gender_concept_id, year_of_birth FROM n_{node}.cdm.person"
            )
        pooled = " UNION ALL ".join(unions)
        distinct = con.execute(f"SELECT count(*), count(DISTINCT person_id) FROM ({pooled})")
        total, unique = distinct.fetchone() or (0, 0)
        assert total == unique == PERSONS * len(cdms), "the node CDMs must not share persons"
        rows = con.execute(
            f"""
            SELECT CASE gender_concept_id WHEN 8507 THEN 'MALE' WHEN 8532 THEN 'FEMALE'
                                          ELSE 'OTHER/UNKNOWN' END AS sex,
                   {band_case} AS age_band,
                   count(*) AS persons
            FROM ({pooled}) AS pooled
            WHERE year_of_birth <= {year}
            GROUP BY 1, 2
            """
        ).fetchall()
    return {(sex, band): int(n) for sex, band, n in rows}


def _cells(document: JsonObject) -> dict[Cell, dict[str, Any]]:
    return {(c["sex"], c["age_band"]): c for c in document["cells"]}


def _assert_matches_truth(
    pooled: JsonObject,
    released: Mapping[str, JsonObject],
    truth: Mapping[Cell, int],
    min_cell_count: int,
) -> int:
    """Complete cells equal the truth; incomplete ones are short by what the suppressing nodes
    hid (between 1 and min_cell_count - 1 persons each). Returns the number of complete cells."""
    complete = 0
    for key, cell in _cells(pooled).items():
        expected = truth.get(key, 0)
        hiding = [node for node in released if _cells(released[node])[key]["suppressed"]]
        assert cell["suppressed_at"] == sorted(hiding)
        assert cell["complete"] is (not hiding)
        if cell["complete"]:
            assert cell["count"] == expected, key
            complete += 1
        else:
            missing = expected - cell["count"]
            assert len(hiding) <= missing <= len(hiding) * (min_cell_count - 1), key
    return complete


def test_default_bands_equal_pooled_group_by(node_cdms: dict[str, CdmDatabase]) -> None:
    params = PersonCountParameters()
    released, pooled = _federated(node_cdms, params, min_cell_count=5)
    band_case = """CASE WHEN 2025 - year_of_birth < 18 THEN '0-17'
                        WHEN 2025 - year_of_birth < 45 THEN '18-44'
                        WHEN 2025 - year_of_birth < 65 THEN '45-64'
                        ELSE '65+' END"""
    truth = _pooled_truth(node_cdms, band_case, 2025)
    complete = _assert_matches_truth(pooled, released, truth, 5)
    # Every cell of the 3 x 4 grid is present, in order; the synthetic data has no third sex,
    # so its cells are released zeros (not suppressed) and the others are large.
    assert [(c["sex"], c["age_band"]) for c in pooled["cells"]] == [
        (sex, band)
        for sex in ("FEMALE", "MALE", "OTHER/UNKNOWN")
        for band in ("0-17", "18-44", "45-64", "65+")
    ]
    assert complete == 12
    assert sum(c["count"] for c in pooled["cells"]) == PERSONS * len(NODES)


@pytest.mark.parametrize(
    ("edges", "year", "min_cell_count", "some_suppressed"),
    [
        ([0, 5, 10, 20, 40, 80], 2020, 10, False),
        ([0, 1, 2, 3, 90, 100], 2025, 8, True),  # narrow bands: small cells at the nodes
        ([0], 2010, 3, False),  # one open band; persons born after 2010 are excluded
    ],
)
def test_custom_bands_equal_pooled_group_by(
    node_cdms: dict[str, CdmDatabase],
    edges: list[int],
    year: int,
    min_cell_count: int,
    some_suppressed: bool,
) -> None:
    params = PersonCountParameters(age_band_edges=edges, reference_year=year)
    released, pooled = _federated(node_cdms, params, min_cell_count)
    truth = _pooled_truth(node_cdms, _case_bands(edges, year), year)
    complete = _assert_matches_truth(pooled, released, truth, min_cell_count)
    assert complete >= len(pooled["cells"]) // 2
    if some_suppressed:
        assert complete < len(pooled["cells"]), "this case is meant to exercise suppression"


@pytest.mark.postgres
def test_postgresql_gives_the_same_cells_as_duckdb(
    node_cdms: dict[str, CdmDatabase], fresh_postgres_url: str
) -> None:
    """The same synthetic CDM in PostgreSQL: the one statement runs there too (bound
    parameters in CASE and GROUP BY are where engines differ) and releases the same cells."""
    pg = CdmDatabase.parse(fresh_postgres_url)
    generate(pg, SynthOptions(persons=PERSONS, seed=7, profile="fi", id_offset=NODES["fi"]))
    analysis = PersonCount()
    for params in (
        PersonCountParameters(),
        PersonCountParameters(age_band_edges=[0, 1, 2, 3, 90, 100], reference_year=2025),
        PersonCountParameters(age_band_edges=[0], reference_year=2010),
    ):
        on_pg = _compute(analysis, params, pg, 8)
        on_duckdb = _compute(analysis, params, node_cdms["fi"], 8)
        assert on_pg == on_duckdb
    # And against SQL written by hand for PostgreSQL.
    engine = sa.create_engine(fresh_postgres_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT gender_concept_id = 8532, 2025 - year_of_birth >= 65, count(*) "
                    "FROM cdm.person WHERE year_of_birth <= 2025 GROUP BY 1, 2"
                )
            ).all()
    finally:
        engine.dispose()
    released = _cells(_compute(analysis, PersonCountParameters(), pg, 1))
    assert released[("FEMALE", "65+")]["count"] == sum(n for f, old, n in rows if f and old)
    assert released[("MALE", "65+")]["count"] == sum(n for f, old, n in rows if not f and old)
