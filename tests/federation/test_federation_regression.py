"""Federated analytics II through the live federation: a logistic and a Poisson regression
equal statsmodels fitted on the pooled rows, a Kaplan-Meier curve and its log-rank test equal
lifelines on the pooled rows (same grid), a node's regression guard refuses, and the
differential-privacy budget at each node is spent, reported and then refused.

The federation is real: a coordinator and three nodes (profiles fr, fi, dk: disjoint persons)
as separate processes over mutual TLS, every round a signed assignment checked against the
permit and the node's policy. The references are independent of the product: hand-written SQL
on the union of the three node CDMs (`glm_reference`, `km_reference`), then statsmodels and
lifelines.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lifelines.statistics import multivariate_logrank_test

from ehds.cli.demo_command import wait_for_nodes
from ehds.cli.local_federation import DEMO_PRIVACY_BUDGET, LocalFederation, prepare, running
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import load_client_config
from ehds.federation.model import AnalysisRef, ErrorCode, Study, StudySpec, StudyState
from glm_reference import (
    LOGISTIC,
    POISSON,
    assert_matches,
    reference_logistic,
    reference_poisson,
    statsmodels_fit,
)
from km_reference import (
    OUTCOME,
    TARGET,
    TOLERANCE,
    assert_curve_equals_lifelines,
    coarsened,
    pooled_person_times,
    strata_column,
)

pytestmark = pytest.mark.slow

PERSONS = 4000
MIN_CELL = 5
WAIT_S = 180.0
ANALYSES = (("glm", "1.0.0"), ("kaplan_meier", "1.0.0"), ("person_count", "1.0.0"))


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    root = tmp_path_factory.mktemp("fed-regression")
    fed = prepare(
        root / "fed",
        persons=PERSONS,
        analyses=ANALYSES,
        min_cell_count=MIN_CELL,
        heartbeat_interval_seconds=0.5,
    )
    with running(fed) as started:
        wait_for_nodes(started.operator_config, list(started.nodes), 60.0)
        yield started


@pytest.fixture(scope="module")
def node_files(federation: LocalFederation) -> dict[str, Path]:
    """Each node's CDM file, by country (the references read them directly, read-only)."""
    return {setup.country: setup.cdm for setup in federation.nodes.values()}


def run_study(fed: LocalFederation, analysis: str, parameters: dict[str, Any]) -> Study:
    with CoordinatorClient(load_client_config(fed.researcher_config)) as client:
        study = client.submit(
            StudySpec(
                title=f"issue 7: {analysis}",
                analysis=AnalysisRef(analysis, "1.0.0"),
                parameters=json.dumps(parameters, sort_keys=True).encode(),
                min_nodes=len(fed.nodes),
                deadline_seconds=int(WAIT_S),
                data_permit_id=fed.permit_id,
            )
        )
        return client.wait(study.id, timeout=WAIT_S)


def results(fed: LocalFederation, study: Study) -> dict[str, Any]:
    assert study.state is StudyState.COMPLETED, study.state_reason
    with CoordinatorClient(load_client_config(fed.researcher_config)) as client:
        document: dict[str, Any] = client.results(study.id)
    return document


def test_logistic_regression_equals_statsmodels_on_the_pooled_rows(
    federation: LocalFederation, node_files: dict[str, Path]
) -> None:
    study = run_study(federation, "glm", LOGISTIC)
    document = results(federation, study)
    pooled = document["pooled"]
    frame = reference_logistic(node_files)
    assert_matches(
        pooled, statsmodels_fit(frame, "binomial", ["age10", "female", "sbp"]), len(frame)
    )
    # Several rounds went through the protocol, each a task per node.
    assert document["rounds"] == pooled["rounds"] >= 3
    assert study.round == document["rounds"] - 1
    # Per-node fits equal statsmodels on each node's own rows; the meta-analysis is beside them.
    for entry in pooled["per_node"]:
        country = entry["node"].removeprefix("node-")
        own = reference_logistic({country: node_files[country]})
        reference = statsmodels_fit(own, "binomial", ["age10", "female", "sbp"])
        assert entry["n"] == len(own)
        estimates = [c["estimate"] for c in entry["coefficients"]]
        assert estimates == pytest.approx(list(reference.params), rel=1e-5)
    for meta in pooled["meta_analysis"]:
        assert meta["k"] == 3
        assert meta["tau2"] >= 0
        assert 0 <= meta["i2"] < 1


def test_poisson_regression_with_offset_equals_statsmodels(
    federation: LocalFederation, node_files: dict[str, Path]
) -> None:
    document = results(federation, run_study(federation, "glm", POISSON))
    frame = reference_poisson(node_files)
    assert_matches(
        document["pooled"], statsmodels_fit(frame, "poisson", ["age10", "female"]), len(frame)
    )


def test_kaplan_meier_and_log_rank_equal_lifelines_on_the_pooled_rows(
    federation: LocalFederation, node_files: dict[str, Path]
) -> None:
    parameters = {"target": TARGET, "outcome": OUTCOME, "interval_days": 180, "strata": "sex"}
    document = results(federation, run_study(federation, "kaplan_meier", parameters))
    assert document["rounds"] == 2
    pooled = document["pooled"]
    cuts = pooled["cuts"]
    assert len(cuts) >= 3
    rows = coarsened(pooled_person_times(node_files), cuts, 1825)
    rows["stratum"] = strata_column(rows, "sex", [])
    place = pooled["places"]["pooled"]
    assert_curve_equals_lifelines(place["overall"], rows, 0.95, cuts)
    for stratum, curve in place["strata"].items():
        assert_curve_equals_lifelines(curve, rows[rows.stratum == stratum], 0.95, cuts)
    test = multivariate_logrank_test(rows.duration, rows.stratum, rows.event)
    assert place["log_rank"]["chi2"] == pytest.approx(test.test_statistic, rel=TOLERANCE)
    assert place["log_rank"]["df"] == test.degrees_of_freedom


def test_a_node_guard_refuses_a_regression_naming_the_rule(federation: LocalFederation) -> None:
    """An outcome window of one day: too few persons with the outcome at every node."""
    parameters = json.loads(json.dumps(LOGISTIC))
    parameters["outcome"]["end_day"] = 1
    study = run_study(federation, "glm", parameters)
    assert study.state is StudyState.FAILED
    assert {task.error_code for task in study.nodes} == {ErrorCode.DISCLOSURE_REFUSED}
    for task in study.nodes:
        assert "glm.outcome_cell" in task.reason
        assert str(MIN_CELL) in task.reason


def test_differential_privacy_is_spent_reported_and_then_refused(
    federation: LocalFederation,
) -> None:
    """Each researcher may spend half the permit's budget at each node (the demo's policy):
    two releases of half that fit exactly, a third is refused at every node."""
    rho = DEMO_PRIVACY_BUDGET / 2 / 2
    parameters = {"privacy": {"rho": rho, "delta": 1e-6}}
    for _ in range(2):
        document = results(federation, run_study(federation, "person_count", parameters))
        privacy = document["pooled"]["privacy"]
        assert set(privacy["nodes"]) == set(federation.nodes)
        for block in privacy["nodes"].values():
            assert block["rho"] == rho
            assert block["delta"] == 1e-6
            assert 0 < block["epsilon"] < 10
    refused = run_study(federation, "person_count", parameters)
    assert refused.state is StudyState.FAILED
    for task in refused.nodes:
        assert task.error_code is ErrorCode.DISCLOSURE_REFUSED
        assert "privacy.budget.researcher" in task.reason
    # The ledger is in each node's audit chain: two charges, one refusal.
    for setup in federation.nodes.values():
        with sqlite3.connect(setup.folder / "node-state.db") as db:
            actions = [row[0] for row in db.execute("SELECT action FROM audit_log ORDER BY seq")]
        assert actions.count("privacy.charged") == 2
        assert actions.count("privacy.refused") == 1
