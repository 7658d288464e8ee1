"""`person_count` disclosure control, parameters, pooling flags and the CLI table.

The CDM here is a small synthetic one with a few persons edited in place: three with other
gender concepts (a small OTHER/UNKNOWN cell) and two born after the reference year.
"""

from __future__ import annotations

import threading
from typing import Any

import duckdb
import pytest

from ehds.analyses.base import (
    ComputeContext,
    InvalidParametersError,
    JsonObject,
    TaskCancelledError,
    canonical_json,
)
from ehds.analyses.engine import cdm_session
from ehds.analyses.person_count import (
    InvalidNodeResultError,
    PersonCount,
    PersonCountParameters,
)
from ehds.federation.model import TaskStage
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate

PERSONS = 300
OTHER_GENDERS = (0, 8521, 8551)  # no matching concept, OTHER, UNKNOWN: one person each
FUTURE_BORN = 2


@pytest.fixture(scope="module")
def cdm(tmp_path_factory: pytest.TempPathFactory) -> CdmDatabase:
    path = tmp_path_factory.mktemp("cdm") / "site.duckdb"
    db = CdmDatabase.parse(str(path))
    generate(db, SynthOptions(persons=PERSONS, seed=3, profile="dk"))
    with duckdb.connect(str(path)) as con:
        rows = con.execute("SELECT person_id FROM cdm.person ORDER BY person_id").fetchall()
        ids = [r[0] for r in rows]
        for person_id, gender in zip(ids, OTHER_GENDERS, strict=False):
            con.execute(
                "UPDATE cdm.person SET gender_concept_id = ?, year_of_birth = 1980 "
                "WHERE person_id = ?",
                [gender, person_id],
            )
        for person_id in ids[-FUTURE_BORN:]:
            con.execute(
                "UPDATE cdm.person SET year_of_birth = 2030 WHERE person_id = ?", [person_id]
            )
    return db


def _truth(db: CdmDatabase) -> dict[tuple[str, str], int]:
    with duckdb.connect(str(db.duckdb_path), read_only=True) as con:
        rows = con.execute(
            """
            SELECT CASE gender_concept_id WHEN 8507 THEN 'MALE' WHEN 8532 THEN 'FEMALE'
                                          ELSE 'OTHER/UNKNOWN' END,
                   CASE WHEN 2025 - year_of_birth < 18 THEN '0-17'
                        WHEN 2025 - year_of_birth < 45 THEN '18-44'
                        WHEN 2025 - year_of_birth < 65 THEN '45-64' ELSE '65+' END,
                   count(*)
            FROM cdm.person WHERE year_of_birth <= 2025 GROUP BY 1, 2
            """
        ).fetchall()
    return {(sex, band): int(n) for sex, band, n in rows}


def _compute(db: CdmDatabase, min_cell_count: int, **params: Any) -> JsonObject:
    with cdm_session(db) as engine:
        return PersonCount().compute(
            PersonCountParameters(**params),
            ComputeContext(cdm=None, min_cell_count=min_cell_count, engine=engine),
        )


def _suppressed(result: JsonObject) -> set[tuple[str, str]]:
    return {(c["sex"], c["age_band"]) for c in result["cells"] if c["suppressed"]}


# --------------------------------------------------------------------------- node side


@pytest.mark.parametrize("min_cell_count", [1, 2, 4, 10, 50, 200])
def test_no_small_cell_is_ever_released(cdm: CdmDatabase, min_cell_count: int) -> None:
    truth = _truth(cdm)
    result = _compute(cdm, min_cell_count)
    assert result["min_cell_count"] == min_cell_count
    for cell in result["cells"]:
        true_count = truth.get((cell["sex"], cell["age_band"]), 0)
        if 0 < true_count < min_cell_count:
            assert cell == {
                "sex": cell["sex"],
                "age_band": cell["age_band"],
                "count": None,
                "suppressed": True,
            }
        else:
            assert cell["count"] == true_count
            assert cell["suppressed"] is False
        if cell["count"] is not None:
            assert cell["count"] == 0 or cell["count"] >= min_cell_count


def test_raising_min_cell_count_suppresses_more(cdm: CdmDatabase) -> None:
    previous: set[tuple[str, str]] = set()
    sizes = []
    for threshold in (1, 4, 20, 60, 120):
        suppressed = _suppressed(_compute(cdm, threshold))
        assert previous <= suppressed
        previous = suppressed
        sizes.append(len(suppressed))
    assert sizes[0] == 0
    assert sizes[-1] > sizes[1] > 0


def test_other_genders_pool_into_one_category(cdm: CdmDatabase) -> None:
    cells = {(c["sex"], c["age_band"]): c for c in _compute(cdm, 1)["cells"]}
    assert cells[("OTHER/UNKNOWN", "45-64")]["count"] == len(OTHER_GENDERS)
    # Three persons are a small cell at the default threshold.
    cells = {(c["sex"], c["age_band"]): c for c in _compute(cdm, 10)["cells"]}
    assert cells[("OTHER/UNKNOWN", "45-64")] == {
        "sex": "OTHER/UNKNOWN",
        "age_band": "45-64",
        "count": None,
        "suppressed": True,
    }
    # Absent groups are released as zeros, so every combination is there.
    assert cells[("OTHER/UNKNOWN", "0-17")]["count"] == 0
    assert cells[("OTHER/UNKNOWN", "0-17")]["suppressed"] is False


def test_persons_born_after_the_reference_year_are_left_out(cdm: CdmDatabase) -> None:
    counted = sum(c["count"] for c in _compute(cdm, 1)["cells"])
    assert counted == PERSONS - FUTURE_BORN
    # With an earlier reference year, everybody born after it drops out too.
    cells = _compute(cdm, 1, reference_year=1950)["cells"]
    assert sum(c["count"] for c in cells) < counted


def test_output_holds_cells_only_never_a_total(cdm: CdmDatabase) -> None:
    result = _compute(cdm, 10)
    assert set(result) == {"cells", "min_cell_count"}
    assert all(set(c) == {"sex", "age_band", "count", "suppressed"} for c in result["cells"])
    assert [(c["sex"], c["age_band"]) for c in result["cells"]] == [
        (sex, band)
        for sex in ("FEMALE", "MALE", "OTHER/UNKNOWN")
        for band in ("0-17", "18-44", "45-64", "65+")
    ]
    assert canonical_json(result) == canonical_json(_compute(cdm, 10))


def test_compute_stops_when_cancelled_and_reports_stages(cdm: CdmDatabase) -> None:
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(TaskCancelledError):
        PersonCount().compute(PersonCountParameters(), ComputeContext(cdm, 10, cancelled))
    stages: list[TaskStage] = []
    with cdm_session(cdm) as engine:
        ctx = ComputeContext(
            None, 10, report=lambda stage, fraction: stages.append(stage), engine=engine
        )
        PersonCount().compute(PersonCountParameters(), ctx)
    assert stages == [TaskStage.QUERYING, TaskStage.DISCLOSURE_CHECK]


# --------------------------------------------------------------------------- parameters


def test_parameter_defaults_and_canonical_encoding() -> None:
    analysis = PersonCount()
    params = analysis.parse_parameters(b"{}")
    assert params.age_band_edges == [0, 18, 45, 65]
    assert params.reference_year == 2025
    assert params.band_labels() == ["0-17", "18-44", "45-64", "65+"]
    encoded = analysis.encode_parameters(params)
    assert encoded == b'{"age_band_edges":[0,18,45,65],"reference_year":2025}'
    assert analysis.parse_parameters(encoded) == params
    assert PersonCountParameters(age_band_edges=[0]).band_labels() == ["0+"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"age_band_edges": [18, 45]}, "parameters.age_band_edges: Value error, must start at 0"),
        ({"age_band_edges": [0, 45, 45]}, "parameters.age_band_edges: Value error, must be strict"),
        ({"age_band_edges": []}, "parameters.age_band_edges: List should have at least 1 item"),
        ({"age_band_edges": [0, 200]}, "parameters.age_band_edges: Value error, edges must be at"),
        ({"age_band_edges": [0, "18"]}, "parameters.age_band_edges.1: Input should be a valid int"),
        ({"age_band_edges": [0, True]}, "parameters.age_band_edges.1: Input should be a valid int"),
        ({"age_band_edges": "0,18"}, "parameters.age_band_edges: Input should be a valid list"),
        ({"reference_year": 2025.5}, "parameters.reference_year: Input should be a valid int"),
        ({"reference_year": 1000}, "parameters.reference_year: Input should be greater than or"),
        ({"age_bands": [0, 18]}, "parameters.age_bands: unknown parameter"),
    ],
)
def test_bad_parameters_name_the_field(raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidParametersError) as caught:
        PersonCount().parse_parameters(raw)
    assert str(caught.value).startswith("person_count 1.0.0: ")
    assert expected in str(caught.value)


# --------------------------------------------------------------------------- coordinator side


def _released(counts: dict[tuple[str, str], int | None], min_cell_count: int = 5) -> JsonObject:
    """A node's released table over the default grid: cells not in ``counts`` are zeros."""
    params = PersonCountParameters()
    cells = []
    for sex in ("FEMALE", "MALE", "OTHER/UNKNOWN"):
        for band in params.band_labels():
            count = counts.get((sex, band), 0)
            cells.append(
                {"sex": sex, "age_band": band, "count": count, "suppressed": count is None}
            )
    return {"cells": cells, "min_cell_count": min_cell_count}


def test_aggregate_flags_cells_a_node_suppressed() -> None:
    params = PersonCountParameters()
    pooled = PersonCount().aggregate(
        params,
        {
            "fr": _released({("FEMALE", "0-17"): 40, ("MALE", "65+"): None}),
            "fi": _released({("FEMALE", "0-17"): 12, ("MALE", "65+"): 30}),
            "dk": _released({("FEMALE", "0-17"): None, ("MALE", "65+"): None}),
        },
    )
    cells = {(c["sex"], c["age_band"]): c for c in pooled["cells"]}
    assert cells[("FEMALE", "0-17")] == {
        "sex": "FEMALE",
        "age_band": "0-17",
        "count": 52,
        "complete": False,
        "suppressed_at": ["dk"],
    }
    assert cells[("MALE", "65+")]["count"] == 30
    assert cells[("MALE", "65+")]["suppressed_at"] == ["dk", "fr"]
    assert cells[("MALE", "18-44")] == {
        "sex": "MALE",
        "age_band": "18-44",
        "count": 0,
        "complete": True,
        "suppressed_at": [],
    }
    assert set(pooled) == {"cells"}
    assert len(pooled["cells"]) == 12

    header, rows = PersonCount().table(pooled)
    assert header == ["sex", "age_band", "persons", "flags"]
    assert rows[0] == ["FEMALE", "0-17", 52, "incomplete: suppressed at dk"]
    assert rows[7] == ["MALE", "65+", 30, "incomplete: suppressed at dk, fr"]
    assert rows[5] == ["MALE", "18-44", 0, ""]


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"cells": "nope", "min_cell_count": 5}, "malformed at cells"),
        ({"cells": []}, "malformed at min_cell_count"),
        ({"cells": [], "min_cell_count": 5}, "does not hold the expected"),
        (_released({("MALE", "0-17"): 3}), "breaks its own disclosure rule"),
        (_released({("MALE", "0-17"): -1}), "malformed at cells.4.count"),
    ],
)
def test_aggregate_refuses_a_malformed_node_result(result: JsonObject, expected: str) -> None:
    with pytest.raises(InvalidNodeResultError, match=expected) as caught:
        PersonCount().aggregate(PersonCountParameters(), {"fr": _released({}), "fi": result})
    assert "node 'fi'" in str(caught.value)


def test_cells_are_ordered_numerically_by_band() -> None:
    labels = PersonCountParameters(age_band_edges=[0, 5, 10, 100]).band_labels()
    assert labels == ["0-4", "5-9", "10-99", "100+"]
    pooled = PersonCount().aggregate(PersonCountParameters(age_band_edges=[0, 5, 10, 100]), {})
    assert [c["age_band"] for c in pooled["cells"][:4]] == labels
