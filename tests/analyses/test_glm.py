"""`glm` federated over three synthetic CDMs equals statsmodels' GLM on the pooled rows.

Three synthetic CDMs (DK, FI, FR profiles, disjoint person ids) stand for three nodes; the fit
is driven by `run_locally`, as the coordinator drives rounds. The reference builds the design
rows with hand-written SQL over the union of the three files (one DuckDB connection that
attaches them; no code of the analysis is involved) and fits them with statsmodels.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ehds.analyses.base import ComputeContext, InvalidParametersError, JsonObject
from ehds.analyses.engine import IbisCdm, duckdb_session
from ehds.analyses.glm import Glm, GlmParameters
from ehds.analyses.iteration import round_parameters, run_locally
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate
from glm_reference import (
    AGE,
    FEMALE,
    LINEAR,
    LOGISTIC,
    MI,
    NODES,
    PERSONS,
    POISSON,
    RTOL,
    assert_matches,
    cohort,
    reference_linear,
    reference_logistic,
    reference_poisson,
    statsmodels_fit,
)


class Workspace:
    """Test double of the node's workspace: a name per (study, purpose), recorded."""

    def __init__(self, study: str) -> None:
        self.study = study
        self.names: list[str] = []

    def table_name(self, purpose: str) -> str:
        name = f"ws_{self.study}_{purpose}"
        self.names.append(name)
        return name


@pytest.fixture(scope="module")
def node_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("glm_nodes")
    files = {}
    for node, offset in NODES.items():
        path = folder / f"node_{node}.duckdb"
        options = SynthOptions(persons=PERSONS, seed=11, profile=node, id_offset=offset)
        generate(CdmDatabase.parse(str(path)), options)
        files[node] = path
    return files


@pytest.fixture
def open_nodes(node_files: dict[str, Path], tmp_path: Path) -> Iterator[dict[str, IbisCdm]]:
    with ExitStack() as stack:
        yield {
            node: stack.enter_context(duckdb_session(path, tmp_path / f"results_{node}.duckdb"))
            for node, path in node_files.items()
        }


def contexts(
    engines: dict[str, IbisCdm], study: str, *, min_cell_count: int = 5
) -> dict[str, ComputeContext]:
    return {
        node: ComputeContext(
            cdm=None,
            min_cell_count=min_cell_count,
            engine=engine,
            workspace=Workspace(study),
            study_id=study,
        )
        for node, engine in engines.items()
    }


def fit(glm: Glm, raw: JsonObject, ctxs: dict[str, ComputeContext]) -> tuple[JsonObject, int]:
    return run_locally(glm, glm.parse_parameters(raw), ctxs)


# --------------------------------------------------------------------------- tests


def test_logistic_equals_statsmodels_on_pooled_rows(
    node_files: dict[str, Path], open_nodes: dict[str, IbisCdm]
) -> None:
    result, rounds = fit(Glm(), LOGISTIC, contexts(open_nodes, "logistic"))
    frame = reference_logistic(node_files)
    reference = statsmodels_fit(frame, "binomial", ["age10", "female", "sbp"])
    assert_matches(result, reference, len(frame))
    assert result["rounds"] == rounds
    assert 3 <= rounds <= 10
    assert [c["name"] for c in result["coefficients"]] == ["intercept", "age10", "female", "sbp"]
    odds = result["coefficients"][1]
    assert odds["exp_estimate"] == pytest.approx(np.exp(reference.params[1]), rel=RTOL)
    assert odds["exp_ci_lower"] == pytest.approx(np.exp(reference.conf_int()[1][0]), rel=RTOL)
    # per-node fits and their meta-analysis
    assert [n["node"] for n in result["per_node"]] == sorted(NODES)
    assert sum(n["n"] for n in result["per_node"]) == len(frame)
    assert all(n["converged"] for n in result["per_node"])
    meta = {m["name"]: m for m in result["meta_analysis"]}
    assert meta["age10"]["k"] == 3
    assert meta["age10"]["method"] == "DerSimonian-Laird"
    header, rows = Glm().table(result)
    assert header[:3] == ["term", "estimate", "se"]
    assert len(rows) == 4


def test_per_node_fit_equals_statsmodels_on_that_node(
    node_files: dict[str, Path], open_nodes: dict[str, IbisCdm]
) -> None:
    result, _ = fit(Glm(), LOGISTIC, contexts(open_nodes, "per_node"))
    frame = reference_logistic({"fi": node_files["fi"]})
    reference = statsmodels_fit(frame, "binomial", ["age10", "female", "sbp"])
    fi = next(n for n in result["per_node"] if n["node"] == "fi")
    assert fi["n"] == len(frame)
    np.testing.assert_allclose(
        [c["estimate"] for c in fi["coefficients"]], reference.params, rtol=RTOL
    )
    np.testing.assert_allclose([c["se"] for c in fi["coefficients"]], reference.bse, rtol=RTOL)


def test_poisson_with_offset_equals_statsmodels(
    node_files: dict[str, Path], open_nodes: dict[str, IbisCdm]
) -> None:
    result, _ = fit(Glm(), POISSON, contexts(open_nodes, "poisson"))
    frame = reference_poisson(node_files)
    assert frame.y.max() > 1  # counts, not just 0/1
    reference = statsmodels_fit(frame, "poisson", ["age10", "female"])
    assert_matches(result, reference, len(frame))
    assert result["link"] == "log"
    assert result["coefficients"][2]["exp_estimate"] == pytest.approx(
        np.exp(reference.params[2]), rel=RTOL
    )


def test_linear_equals_statsmodels(
    node_files: dict[str, Path], open_nodes: dict[str, IbisCdm]
) -> None:
    result, rounds = fit(Glm(), LINEAR, contexts(open_nodes, "linear"))
    frame = reference_linear(node_files)
    reference = statsmodels_fit(frame, "gaussian", ["age10", "female", "t2dm"])
    assert_matches(result, reference, len(frame))
    assert result["pearson_chi2"] == pytest.approx(reference.pearson_chi2, rel=RTOL)
    assert rounds == 2  # the identity link is solved by one Newton step
    assert "exp_estimate" not in result["coefficients"][0]


def test_design_is_built_once_and_rebuilt_when_missing(
    open_nodes: dict[str, IbisCdm], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctxs = contexts(open_nodes, "cache")
    built: list[str] = []
    for engine in open_nodes.values():
        original = engine.create_results_table

        def spy(name: str, expr: Any, original: Any = original) -> Any:
            if name.startswith("ws_"):
                built.append(name)
            return original(name, expr)

        monkeypatch.setattr(engine, "create_results_table", spy)
    collected: dict[int, dict[str, int]] = {}
    before = {node: engine.rows_collected for node, engine in open_nodes.items()}

    def on_round(number: int, results: Any) -> None:
        collected[number] = {
            node: engine.rows_collected - before[node] for node, engine in open_nodes.items()
        }
        before.update({node: engine.rows_collected for node, engine in open_nodes.items()})
        if number == 1:  # the workspace expired at one node: rebuilt, same rows
            open_nodes["fr"].drop_results_table("ws_cache_glm_design")

    result, rounds = run_locally(Glm(), Glm().parse_parameters(LOGISTIC), ctxs, on_round=on_round)
    assert sorted(built) == ["ws_cache_glm_design"] * 4  # once per node, once more at fr
    assert all(counts == 1 for r, c in collected.items() if r >= 1 for counts in c.values())
    assert all(w.names == ["ws_cache_glm_design"] * rounds for w in _workspaces(ctxs))
    assert result["converged"]


def _workspaces(ctxs: dict[str, ComputeContext]) -> list[Workspace]:
    return [ctx.workspace for ctx in ctxs.values() if isinstance(ctx.workspace, Workspace)]


class RecordingGuard:
    def __init__(self) -> None:
        self.fingerprints: list[str] = []

    def check_population(self, engine: Any, persons: Any, *, fingerprint: str) -> None:
        assert persons.columns == ("person_id",)
        self.fingerprints.append(fingerprint)


def test_release_guard_sees_the_same_population_every_round(
    open_nodes: dict[str, IbisCdm],
) -> None:
    ctxs = contexts(open_nodes, "guard")
    guards = {node: RecordingGuard() for node in ctxs}
    for node, ctx in ctxs.items():
        ctx.release_guard = guards[node]
    fit(Glm(), LINEAR, ctxs)
    for guard in guards.values():
        # Once, when the design table was built: later rounds describe the same table.
        assert len(guard.fingerprints) == 1
    # A later round whose workspace table is gone rebuilds it and asks again, with the same
    # fingerprint.
    glm = Glm()
    base = glm.encode_parameters(glm.parse_parameters(LINEAR))
    for node, ctx in ctxs.items():
        assert ctx.engine is not None
        assert ctx.workspace is not None
        ctx.engine.drop_results_table(ctx.workspace.table_name("glm_design"))
        later = round_parameters(base, 1, {"coefficients": [0.0] * 4})
        glm.compute(glm.parse_parameters(later), ctx)
        assert len(guards[node].fingerprints) == 2
        assert len(set(guards[node].fingerprints)) == 1


def test_round_parameters_are_validated() -> None:
    glm = Glm()
    params = glm.parse_parameters(LOGISTIC)
    assert params.parameter_count == 4
    assert params.round is None
    with pytest.raises(
        InvalidParametersError, match=r"round\.coefficients must hold one value per model term"
    ):
        glm.parse_parameters({**LOGISTIC, "round": {"number": 1, "coefficients": [0.0]}})
    with pytest.raises(InvalidParametersError, match=r"outcome\.cohort"):
        glm.parse_parameters({**LOGISTIC, "outcome": {"measurement_concept_ids": [1]}})
    with pytest.raises(InvalidParametersError, match="measurement_concept_ids"):
        glm.parse_parameters({**LINEAR, "outcome": {"cohort": cohort("x", MI)}})
    with pytest.raises(InvalidParametersError, match="used twice"):
        glm.parse_parameters({**LOGISTIC, "covariates": [AGE, {**FEMALE, "name": "age10"}]})
    assert isinstance(glm.parse_parameters(glm.encode_parameters(params)), GlmParameters)
