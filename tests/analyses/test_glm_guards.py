"""`glm` disclosure guards (each rule refuses, naming the rule and threshold, never a count)
and the coordinator's refusals (singular information, inconsistent node results)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ehds.analyses.base import ComputeContext, DisclosureRefusedError, JsonObject
from ehds.analyses.engine import duckdb_session
from ehds.analyses.glm import Glm, GlmParameters
from ehds.analyses.glm.guards import check_guards
from ehds.analyses.iteration import IterationFailedError, NextRound, run_locally
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate

THRESHOLD = 5


def _cohort(name: str, concept: int) -> JsonObject:
    return {
        "name": name,
        "yaml": {
            "concept_sets": {name: {"include": [{"concept": concept}]}},
            "entry": {"events": [{"condition": name}], "first_occurrence": True},
            "exit": {"days_after_start": 0},
        },
    }


def _params(family: str = "binomial", covariates: int = 2) -> GlmParameters:
    kinds: list[JsonObject] = [
        {"kind": "sex", "name": "female"},
        {
            "kind": "condition",
            "name": "t2dm",
            "concept_ids": [201826],
            "start_day": -365,
            "end_day": 0,
        },
        {"kind": "age", "name": "age"},
    ]
    raw: JsonObject = {
        "family": family,
        "target": _cohort("hypertension", 320128),
        "outcome": {"cohort": _cohort("mi", 4329847)},
        "covariates": kinds[:covariates],
    }
    if family == "gaussian":
        raw["outcome"] = {"measurement_concept_ids": [3004249]}
    return Glm().parse_parameters(raw)


def _row(n: int, positive: int, **extra: int) -> dict[str, Any]:
    """A guard row: covariate 0 (female) and 1 (t2dm) binary unless told otherwise."""
    row: dict[str, Any] = {
        "n": n,
        "g_positive": positive,
        "g_nonbinary_0": 0,
        "g_nonbinary_1": 0,
        "g_ones_0": n // 2,
        "g_ones_1": n // 3,
        "g_outcome_0": positive // 2,
        "g_outcome_1": positive // 3,
        "g_pair_0_1": n // 6,
    }
    row.update(extra)
    return row


def _refused(
    row: dict[str, Any], params: GlmParameters, rule: str, threshold: int = THRESHOLD
) -> str:
    with pytest.raises(DisclosureRefusedError) as caught:
        check_guards(row, params, THRESHOLD)
    assert caught.value.rule == rule
    assert rule in caught.value.message
    assert str(threshold) in caught.value.message
    return caught.value.message


def test_a_row_meeting_every_rule_passes() -> None:
    assert check_guards(_row(600, 90), _params(), THRESHOLD) == 600


def test_too_many_parameters() -> None:
    # 4 terms need n >= 4 / 0.33, i.e. 13 persons
    message = _refused(_row(12, 4), _params(covariates=3), "glm.too_many_parameters", 13)
    assert "12" not in message
    row = _row(13, 6, g_ones_0=6, g_ones_1=6, g_pair_0_1=0, g_nonbinary_2=13)
    assert check_guards(row, _params(covariates=3), 1) == 13


@pytest.mark.parametrize("positive", [3, 0, 598, 600])
def test_outcome_cell(positive: int) -> None:
    message = _refused(_row(600, positive), _params(), "glm.outcome_cell")
    assert str(positive) not in message.replace("600", "")


def test_outcome_cell_of_a_linear_model_is_its_population() -> None:
    _refused(_row(4, 0), _params("gaussian", covariates=0), "glm.outcome_cell")


@pytest.mark.parametrize("ones", [0, 3, 597, 600])
def test_covariate_cell(ones: int) -> None:
    message = _refused(_row(600, 90, g_ones_1=ones), _params(), "glm.covariate_cell")
    assert "'t2dm'" in message
    assert f" {ones} " not in message


def test_a_continuous_covariate_has_no_cells() -> None:
    assert check_guards(_row(600, 90, g_nonbinary_1=590, g_ones_1=2), _params(), THRESHOLD)


def test_cross_cell_of_two_covariates() -> None:
    _refused(_row(600, 90, g_pair_0_1=3), _params(), "glm.cross_cell")
    # ones_0 = 300, ones_1 = 200: both-ones 197 leaves 3 persons with t2dm who are not female
    _refused(_row(600, 90, g_pair_0_1=197), _params(), "glm.cross_cell")
    assert check_guards(_row(600, 90, g_pair_0_1=0), _params(), THRESHOLD) == 600


def test_cross_cell_with_the_outcome() -> None:
    message = _refused(_row(600, 90, g_outcome_1=2), _params(), "glm.cross_cell")
    assert "the outcome" in message
    # a linear model has no binary outcome to cross
    gaussian = _params("gaussian")
    assert check_guards(_row(600, 0, g_outcome_1=2), gaussian, THRESHOLD) == 600


# --------------------------------------------------------------------------- end to end


class _Workspace:
    def table_name(self, purpose: str) -> str:
        return f"ws_guard_{purpose}"


@pytest.fixture(scope="module")
def cdm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("glm_guard") / "fr.duckdb"
    generate(CdmDatabase.parse(str(path)), SynthOptions(persons=3000, seed=3, profile="fr"))
    return path


def test_compute_refuses_with_the_rule(cdm_file: Path, tmp_path: Path) -> None:
    with duckdb_session(cdm_file, tmp_path / "node_results.duckdb") as engine:
        ctx = ComputeContext(
            cdm=None, min_cell_count=100_000, engine=engine, workspace=_Workspace()
        )
        with pytest.raises(DisclosureRefusedError) as caught:
            Glm().compute(_params(covariates=1), ctx)
    assert caught.value.rule == "glm.outcome_cell"
    assert "100000" in caught.value.message


def test_collinear_covariates_fail_the_study(cdm_file: Path, tmp_path: Path) -> None:
    raw = Glm().encode_parameters(_params("gaussian", covariates=0))
    params = Glm().parse_parameters(
        raw.replace(
            b'"covariates":[]',
            b'"covariates":[{"kind":"age","name":"age"},'
            b'{"kind":"age","name":"decades","per_years":10}]',
        )
    )
    with duckdb_session(cdm_file, tmp_path / "node_results.duckdb") as engine:
        ctx = ComputeContext(cdm=None, min_cell_count=5, engine=engine, workspace=_Workspace())
        with pytest.raises(IterationFailedError, match=r"singular.*remove it"):
            run_locally(Glm(), params, {"fr": ctx})


def _sums(n: int, p: int = 3) -> JsonObject:
    return {
        "n": n,
        "score": [0.0] * p,
        "information": np.eye(p).tolist(),
        "deviance": 10.0,
        "pearson_chi2": 10.0,
    }


def test_advance_refuses_inconsistent_node_results() -> None:
    glm, params = Glm(), _params()
    step = glm.advance(params, 0, None, {"a": {"n": 600, "local": None}, "b": {"n": 500}})
    assert isinstance(step, NextRound)
    assert step.round_input == {"coefficients": [0.0, 0.0, 0.0]}
    with pytest.raises(IterationFailedError, match="population"):
        glm.advance(params, 1, step.state, {"a": _sums(600), "b": _sums(501)})
    with pytest.raises(IterationFailedError, match="differ from those of round 0"):
        glm.advance(params, 1, step.state, {"a": _sums(600)})
    bad = {**_sums(500), "score": [0.0]}
    with pytest.raises(IterationFailedError, match="'b' is not a round result"):
        glm.advance(params, 1, step.state, {"a": _sums(600), "b": bad})
    with pytest.raises(IterationFailedError, match="not a round-0 result"):
        glm.advance(params, 0, None, {"a": {"local": None}})
