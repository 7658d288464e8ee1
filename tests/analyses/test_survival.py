"""`kaplan_meier` federated (three synthetic node CDMs, two rounds through `run_locally`)
against lifelines on the pooled rows.

The reference is independent of the analysis' code: hand-written SQL over the union of the
three node files (attached in one DuckDB connection) gives each person's index date, follow-up
and first outcome from the definitions in `ehds.analyses.survival.times`; pandas coarsens the
times to the agreed grid (each time moved to the end of its interval, truncated at the last
cut); lifelines' KaplanMeierFitter and multivariate_logrank_test do the rest.
"""

from __future__ import annotations

import gc
import json
import shutil
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from lifelines.statistics import multivariate_logrank_test

from ehds.analyses.base import (
    ComputeContext,
    DisclosureRefusedError,
    InvalidParametersError,
    JsonObject,
)
from ehds.analyses.engine import IbisCdm, cdm_session
from ehds.analyses.iteration import (
    Finished,
    IterationFailedError,
    NextRound,
    round_parameters,
    run_locally,
    submitted_round,
)
from ehds.analyses.survival import KaplanMeier, KaplanMeierParameters
from ehds.analyses.survival.grid import meets_thresholds, parse_cells
from ehds.omop.database import CdmDatabase
from ehds.omop.parquet_layout import export_layout
from ehds.omop.synth import SynthOptions, generate
from km_reference import (
    OUTCOME,
    TARGET,
    TOLERANCE,
    assert_curve_equals_lifelines,
    coarsened,
    pooled_person_times,
    strata_column,
)

NODES = {"dk": 3_000_000, "fi": 2_000_000, "fr": 1_000_000}  # node (= profile) -> id_offset
PERSONS = 2000
THRESHOLD = 5


def km_params(**overrides: Any) -> KaplanMeierParameters:
    raw: dict[str, Any] = {"target": TARGET, "outcome": OUTCOME, "interval_days": 90}
    raw.update(overrides)
    return KaplanMeier().parse_parameters(raw)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def node_cdms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CdmDatabase]:
    folder = tmp_path_factory.mktemp("nodes")
    cdms = {}
    for node, offset in NODES.items():
        cdm = CdmDatabase.parse(str(folder / f"node_{node}.duckdb"))
        generate(cdm, SynthOptions(persons=PERSONS, seed=7, profile=node, id_offset=offset))
        cdms[node] = cdm
    return cdms


@pytest.fixture
def contexts(node_cdms: dict[str, CdmDatabase]) -> Iterator[dict[str, ComputeContext]]:
    with ExitStack() as stack:
        yield {
            node: ComputeContext(
                cdm=None,
                min_cell_count=THRESHOLD,
                engine=stack.enter_context(cdm_session(cdm)),
            )
            for node, cdm in node_cdms.items()
        }


@pytest.fixture(scope="module")
def person_times(node_cdms: dict[str, CdmDatabase]) -> pd.DataFrame:
    return pooled_person_times({node: cdm.duckdb_path for node, cdm in node_cdms.items()})


def run_study(
    params: KaplanMeierParameters, contexts: Mapping[str, ComputeContext]
) -> tuple[JsonObject, list[dict[str, JsonObject]]]:
    released: list[dict[str, JsonObject]] = []
    result, rounds = run_locally(
        KaplanMeier(), params, contexts, on_round=lambda r, res: released.append(dict(res))
    )
    assert rounds == 2
    return result, released


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"strata": "sex", "interval_days": 180},
        {
            "strata": "age_group",
            "age_band_edges": [0, 45, 65],
            "interval_days": 180,
            "confidence": 0.9,
        },
        {"strata": "sex", "interval_days": 60, "max_days": 1000},
    ],
    ids=["overall", "sex", "age-group", "sex-short-follow-up"],
)
def test_federated_curves_equal_lifelines_on_the_pooled_rows(
    contexts: dict[str, ComputeContext], person_times: pd.DataFrame, overrides: dict[str, Any]
) -> None:
    params = km_params(**overrides)
    result, released = run_study(params, contexts)
    cuts = result["cuts"]
    node_grids = [set(r["cuts"]) for r in released[0].values()]
    assert cuts == sorted(set.intersection(*node_grids))
    assert len(cuts) >= 2, "the case is meant to have a grid of several intervals"
    rows = coarsened(person_times, cuts, params.max_days)
    rows["stratum"] = strata_column(rows, params.strata, list(params.age_band_edges))
    places = result["places"]
    assert set(places) == {"pooled", *NODES}
    for place, content in places.items():
        mine = rows if place == "pooled" else rows[rows.node == place]
        assert_curve_equals_lifelines(content["overall"], mine, params.confidence, cuts)
        if params.strata == "none":
            assert "strata" not in content
            continue
        assert set(content["strata"]) == set(mine.stratum)
        for stratum, got in content["strata"].items():
            assert_curve_equals_lifelines(
                got, mine[mine.stratum == stratum], params.confidence, cuts
            )
        test = multivariate_logrank_test(mine.duration, mine.stratum, mine.event)
        assert content["log_rank"]["chi2"] == pytest.approx(test.test_statistic, rel=TOLERANCE)
        assert content["log_rank"]["p"] == pytest.approx(test.p_value, rel=1e-7)
        assert content["log_rank"]["df"] == test.degrees_of_freedom
    # Every node's released round-1 cells meet the thresholds in every stratum.
    for node_result in released[1].values():
        for raw in node_result["strata"].values():
            assert meets_thresholds(parse_cells(raw, len(cuts)), THRESHOLD)


def test_the_result_document_is_json_and_tabulates(
    contexts: dict[str, ComputeContext],
) -> None:
    params = km_params(strata="sex")
    result, _ = run_study(params, contexts)
    assert json.loads(json.dumps(result)) == result
    header, rows = KaplanMeier().table({"pooled": result})
    assert header[:3] == ["place", "stratum", "time"]
    # (pooled + 3 nodes) x (overall + 2 sexes) curves, one row per cut.
    assert len(rows) == 4 * 3 * len(result["cuts"])


# --------------------------------------------------------------------------- refusals


def test_a_grid_that_breaks_a_threshold_is_refused(contexts: dict[str, ComputeContext]) -> None:
    """Round 1 on the fine grid itself (never agreed): some 30-day interval holds fewer than
    the threshold of events, and the node refuses without saying how many."""
    base = km_params(strata="sex", interval_days=30)
    fine = [*range(30, 1825, 30), 1825]
    analysis = KaplanMeier()
    raw = round_parameters(analysis.encode_parameters(base), 1, {"cuts": fine})
    params = analysis.parse_parameters(raw)
    with pytest.raises(DisclosureRefusedError) as refused:
        analysis.compute(params, contexts["fr"])
    assert refused.value.rule == "km.grid_cell"
    assert str(THRESHOLD) in refused.value.message
    assert not any(ch.isdigit() for ch in refused.value.message.replace(str(THRESHOLD), ""))


def test_a_node_without_any_acceptable_interval_refuses_round_zero(
    node_cdms: dict[str, CdmDatabase],
) -> None:
    with cdm_session(node_cdms["dk"]) as engine:
        ctx = ComputeContext(cdm=None, min_cell_count=100_000, engine=engine)
        with pytest.raises(DisclosureRefusedError) as refused:
            KaplanMeier().compute(km_params(), ctx)
    assert refused.value.rule == "km.grid_cell"


def test_round_zero_releases_only_cut_points_on_the_fine_grid(
    contexts: dict[str, ComputeContext],
) -> None:
    params = km_params(strata="age_group", age_band_edges=[0, 45, 65])
    released = KaplanMeier().compute(params, contexts["fi"])
    assert set(released) == {"cuts"}
    assert set(released["cuts"]) <= set(range(90, 1825, 90)) | {1825}


class RecordingGuard:
    def __init__(self) -> None:
        self.fingerprints: list[str] = []

    def check_population(self, engine: IbisCdm, persons: Any, *, fingerprint: str) -> None:
        assert persons.columns == ("person_id",)
        self.fingerprints.append(fingerprint)


def test_both_rounds_ask_the_release_guard_about_one_population(
    node_cdms: dict[str, CdmDatabase],
) -> None:
    guard = RecordingGuard()
    with cdm_session(node_cdms["fi"]) as engine:
        ctx = ComputeContext(cdm=None, min_cell_count=THRESHOLD, engine=engine, release_guard=guard)
        run_locally(KaplanMeier(), km_params(), {"fi": ctx})
    assert len(guard.fingerprints) == 2
    assert len(set(guard.fingerprints)) == 1


# --------------------------------------------------------------------------- coordinator


def test_nodes_without_a_common_cut_fail_the_iteration() -> None:
    with pytest.raises(IterationFailedError, match="share no cut point"):
        KaplanMeier().advance(km_params(), 0, None, {"a": {"cuts": [90]}, "b": {"cuts": [180]}})


def test_the_agreed_grid_is_the_cut_points_common_to_every_node() -> None:
    step = KaplanMeier().advance(
        km_params(), 0, None, {"a": {"cuts": [90, 270, 540]}, "b": {"cuts": [180, 270, 540, 900]}}
    )
    assert step == NextRound(round_input={"cuts": [270, 540]}, state={"cuts": [270, 540]})


@pytest.mark.parametrize("cuts", [[91], [], [180, 90], "90", [90.0], [90, 90]], ids=str)
def test_cut_points_off_the_fine_grid_fail_the_iteration(cuts: Any) -> None:
    with pytest.raises(IterationFailedError, match="do not define"):
        KaplanMeier().advance(km_params(), 0, None, {"a": {"cuts": cuts}})


@pytest.mark.parametrize(
    "strata",
    [
        {"overall": {"at_risk": [10, 4], "events": [5, 5], "censored": [1, 0]}},  # 10-5-1 != 4
        {"overall": {"at_risk": [10, 4], "events": [5, 4], "censored": [1, 1]}},  # ends at -1
        {"overall": {"at_risk": [10], "events": [5], "censored": [5]}},  # wrong length
        {"MALE": {"at_risk": [10, 4], "events": [5, 4], "censored": [1, 0]}},  # not a stratum
        {"overall": {"at_risk": [10, 4], "events": [5, 4]}},
    ],
)
def test_cells_that_do_not_add_up_fail_the_iteration(strata: JsonObject) -> None:
    with pytest.raises(IterationFailedError, match="does not hold the grid's cells"):
        KaplanMeier().advance(
            km_params(), 1, {"cuts": [90, 180]}, {"a": {"cuts": [90, 180], "strata": strata}}
        )


def test_finished_holds_hand_computed_survival() -> None:
    cells = {"overall": {"at_risk": [10, 4], "events": [5, 4], "censored": [1, 0]}}
    step = KaplanMeier().advance(
        km_params(), 1, {"cuts": [90, 180]}, {"a": {"cuts": [90, 180], "strata": cells}}
    )
    assert isinstance(step, Finished)
    pooled = step.result["places"]["pooled"]["overall"]
    assert pooled["survival"] == pytest.approx([0.5, 0.0])
    assert pooled["variance"][0] == pytest.approx(0.25 * 5 / (10 * 5))
    assert pooled["ci_lower"][1] == pooled["ci_upper"][1] == 0.0


# --------------------------------------------------------------------------- parameters


def test_round_zero_parameters_carry_no_round_key() -> None:
    analysis = KaplanMeier()
    raw = analysis.encode_parameters(km_params())
    assert not submitted_round(raw)
    again = analysis.parse_parameters(round_parameters(raw, 1, {"cuts": [90, 1825]}))
    assert again.round is not None
    assert again.round.cuts == [90, 1825]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"round": {"number": 1, "cuts": [91]}}, "fine grid"),
        ({"round": {"number": 1, "cuts": [180, 90]}}, "strictly increasing"),
        ({"interval_days": 1, "max_days": 5000}, "intervals"),
        ({"strata": "region"}, "parameters.strata"),
    ],
)
def test_invalid_parameters_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParametersError, match=message):
        km_params(**overrides)


# --------------------------------------------------------------------------- engines


@pytest.mark.postgres
def test_postgresql_releases_the_same_cells_as_duckdb(
    node_cdms: dict[str, CdmDatabase], fresh_postgres_url: str
) -> None:
    """The same synthetic CDM in PostgreSQL: both rounds' node queries (date arithmetic, the
    range join on the literal grid, the strata) release what DuckDB releases."""
    pg = CdmDatabase.parse(fresh_postgres_url)
    generate(pg, SynthOptions(persons=PERSONS, seed=7, profile="fi", id_offset=NODES["fi"]))
    analysis = KaplanMeier()
    for params in (
        km_params(strata="sex", interval_days=180),
        km_params(strata="age_group", age_band_edges=[0, 45, 65], interval_days=180),
    ):
        released = {}
        for name, cdm in (("postgresql", pg), ("duckdb", node_cdms["fi"])):
            with cdm_session(cdm) as engine:
                ctx = ComputeContext(cdm=None, min_cell_count=THRESHOLD, engine=engine)
                first = analysis.compute(params, ctx)
                raw = round_parameters(analysis.encode_parameters(params), 1, first)
                released[name] = (first, analysis.compute(analysis.parse_parameters(raw), ctx))
        assert released["postgresql"] == released["duckdb"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
def test_spark_releases_the_same_cells_as_duckdb(
    node_cdms: dict[str, CdmDatabase], tmp_path: Path
) -> None:
    """Spark (local mode) over the Parquet layout of the same node CDM: both rounds release
    what DuckDB releases."""
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java 17+; tests/run.sh installs it")
    from ehds.analyses.spark_engine import SparkSettings, spark_session

    parquet = tmp_path / "cdm"
    export_layout(node_cdms["fi"], parquet)
    analysis = KaplanMeier()
    params = km_params(strata="sex", interval_days=180)
    released = {}
    with spark_session(SparkSettings(parquet=parquet, warehouse=tmp_path / "warehouse")) as spark:
        for name, opened in (("spark", spark.task_engine), ("duckdb", None)):
            with ExitStack() as stack:
                engine = (
                    stack.enter_context(cdm_session(node_cdms["fi"]))
                    if opened is None
                    else opened()
                )
                if opened is not None:
                    stack.callback(engine.close)
                ctx = ComputeContext(cdm=None, min_cell_count=THRESHOLD, engine=engine)
                first = analysis.compute(params, ctx)
                raw = round_parameters(analysis.encode_parameters(params), 1, first)
                released[name] = (first, analysis.compute(analysis.parse_parameters(raw), ctx))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "unclosed <socket.socket", ResourceWarning)
        gc.collect()
    assert released["spark"] == released["duckdb"]
