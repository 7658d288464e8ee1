"""Federated learning through the live federation (issue 8).

A coordinator and three nodes (profiles fr, fi, dk: different populations, disjoint persons)
as separate processes over mutual TLS. Every Flower message travels as a signed task checked
against the permit and the node's policy; every ClientApp runs in a network-isolated worker
at its node, on a feature extract built from that node's CDM.

* The built-in logistic regression (FedAvg) reaches, on a held-out pooled test set (three
  more CDMs of the same profiles, another seed), an AUC within 0.02 of statsmodels' logistic
  regression fitted on the pooled training rows (hand-written SQL over the three node CDMs,
  `glm_reference`).
* An ordinary Flower app (bench/flower_app, written against Flower's public API only) runs
  unchanged; a node whose policy does not allow it refuses, and the study reports it.
* A bundle whose SHA-256 no node allows is refused before any of its code runs.
* A node whose extract is below its policy's minimum rows refuses with the rule.
* Node-level DP reports exactly the epsilon Flower's RDP accountant gives for its parameters.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import rankdata

from ehds.cli.demo_command import wait_for_nodes
from ehds.cli.demo_fl import fl_parameters, fl_policy
from ehds.cli.local_federation import COUNTRY_OFFSETS, LocalFederation, prepare, running
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import load_client_config
from ehds.federation.model import AnalysisRef, ErrorCode, Study, StudySpec, StudyState
from ehds.fl.builtin import builtin_fab
from ehds.fl.bundle import build_fab
from ehds.omop.database import CdmDatabase
from glm_reference import AGE, FEMALE, LOGISTIC, SBP, reference_logistic, statsmodels_fit

pytestmark = pytest.mark.slow

PERSONS = 3000
TEST_SEED = 4242
MIN_CELL = 5
WAIT_S = 240.0
FL = AnalysisRef("fl", "1.0.0")
BENCH_APP = Path(__file__).resolve().parents[2] / "bench" / "flower_app"


@pytest.fixture(scope="module")
def fabs() -> dict[str, bytes]:
    return {"logreg": builtin_fab("ehds-logreg"), "bench": build_fab(BENCH_APP)}


@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory, fabs: dict[str, bytes]
) -> Iterator[LocalFederation]:
    logreg = ("ehds-logreg", "1.0.0", fabs["logreg"])
    bench = ("ehds-bench-flower", "0.1.0", fabs["bench"])
    policies = {
        "node-fr": fl_policy([logreg, bench], min_rows=50, min_events=MIN_CELL),
        "node-fi": fl_policy([logreg, bench], min_rows=50, min_events=MIN_CELL),
        # DK allows the logistic regression only: the ordinary Flower app is refused there.
        "node-dk": fl_policy([logreg], min_rows=50, min_events=MIN_CELL),
    }
    root = tmp_path_factory.mktemp("fed-fl")
    fed = prepare(
        root / "fed",
        persons=PERSONS,
        analyses=(("fl", "1.0.0"),),
        min_cell_count=MIN_CELL,
        heartbeat_interval_seconds=0.5,
        policy_extra=policies,
    )
    with running(fed) as started:
        wait_for_nodes(started.operator_config, list(started.nodes), 60.0)
        yield started


@pytest.fixture(scope="module")
def node_files(federation: LocalFederation) -> dict[str, Path]:
    return {setup.country: setup.cdm for setup in federation.nodes.values()}


@pytest.fixture(scope="module")
def test_files(
    tmp_path_factory: pytest.TempPathFactory, node_files: dict[str, Path]
) -> dict[str, Path]:
    """Held-out CDMs: the same three profiles, another seed (persons never seen in training)."""
    from ehds.omop.synth import SynthOptions, generate

    folder = tmp_path_factory.mktemp("fl-test-cdms")
    files = {}
    for country in node_files:
        path = folder / f"{country}.duckdb"
        generate(
            CdmDatabase.parse(str(path)),
            SynthOptions(
                persons=PERSONS,
                seed=TEST_SEED,
                profile=country,
                id_offset=COUNTRY_OFFSETS.get(country, 0),
            ),
        )
        files[country] = path
    return files


def run_fl(
    fed: LocalFederation, parameters: dict[str, Any], *, min_nodes: int = 3
) -> tuple[Study, dict[str, Any] | None]:
    with CoordinatorClient(load_client_config(fed.researcher_config)) as client:
        study = client.submit(
            StudySpec(
                title="issue 8: federated learning",
                analysis=FL,
                parameters=json.dumps(parameters, sort_keys=True).encode(),
                min_nodes=min_nodes,
                deadline_seconds=int(WAIT_S),
                data_permit_id=fed.permit_id,
            )
        )
        final = client.wait(study.id, timeout=WAIT_S)
        document = client.results(study.id) if final.state is StudyState.COMPLETED else None
    return final, document


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC with mid-ranks for ties (an independent formula, not the app's)."""
    ranks = rankdata(score)
    positives = y == 1
    n1, n0 = int(positives.sum()), int((~positives).sum())
    return float((ranks[positives].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def logreg_parameters(fab: bytes, **extra: Any) -> dict[str, Any]:
    parameters = fl_parameters(
        fab,
        rounds=extra.pop("rounds", 8),
        covariates=[AGE, FEMALE, SBP],
        run_config={"min-nodes": 3, "learning-rate": 0.5, "batch-size": 0, **extra.pop("run", {})},
        **extra,
    )
    parameters["target"] = LOGISTIC["target"]
    parameters["outcome"] = LOGISTIC["outcome"]
    return parameters


def test_federated_logistic_regression_auc_within_002_of_the_pooled_fit(
    federation: LocalFederation,
    node_files: dict[str, Path],
    test_files: dict[str, Path],
    fabs: dict[str, bytes],
) -> None:
    study, document = run_fl(federation, logreg_parameters(fabs["logreg"], run={"local-epochs": 5}))
    assert study.state is StudyState.COMPLETED, study.state_reason
    assert document is not None
    training = document["pooled"]["training"]
    model = training["model"]
    assert model["source"] == "context.state"
    arrays = model["arrays"]["ehds.model"]
    intercept = arrays["intercept"]["values"][0]
    coef = np.array(arrays["coef"]["values"])
    assert training["state"]["ehds.model-info"]["feature-names"] == ["age10", "female", "sbp"]

    train = reference_logistic(node_files)
    held_out = reference_logistic(test_files)
    covariates = ["age10", "female", "sbp"]
    pooled = statsmodels_fit(train, "binomial", covariates)
    x_test = held_out[covariates].to_numpy(dtype=float)
    y_test = held_out["y"].to_numpy(dtype=float)
    pooled_auc = auc(y_test, pooled.params[0] + x_test @ pooled.params[1:])
    federated_auc = auc(y_test, intercept + x_test @ coef)
    assert abs(federated_auc - pooled_auc) <= 0.02, (federated_auc, pooled_auc)
    # Every node joined with its own extract, in an isolated worker; rows equal the reference.
    joined = document["pooled"]["joined"]
    assert sum(entry["rows"] for entry in joined.values()) == len(train)
    assert all(entry["isolation"].startswith("netns") for entry in joined.values())
    # Each round's metrics, aggregated and per node (the policies release them).
    evaluate = [r for r in training["rounds"] if r["type"] == "evaluate"]
    assert evaluate
    assert set(evaluate[-1]["nodes"]) == set(federation.nodes)
    assert 0.5 < evaluate[-1]["aggregate"]["auc"] <= 1.0
    # Rounds are ordinary tasks: the join, a query, then train and evaluate per Flower round.
    assert study.round >= 1 + 2 * 8


def test_an_ordinary_flower_app_runs_unchanged_and_a_node_not_allowing_it_refuses(
    federation: LocalFederation, fabs: dict[str, bytes], tmp_path: Path
) -> None:
    timings = tmp_path / "timings.json"
    parameters = fl_parameters(
        fabs["bench"],
        name="ehds-bench-flower",
        version="0.1.0",
        covariates=[AGE, FEMALE],
        run_config={
            "rounds": 2,
            "warmup-rounds": 0,
            "min-nodes": 2,
            "timings-path": str(timings),
        },
    )
    study, document = run_fl(federation, parameters, min_nodes=2)
    assert study.state is StudyState.COMPLETED, study.state_reason
    assert document is not None
    nodes = {entry["node"]: entry for entry in document["nodes"]}
    assert nodes["node-dk"]["state"] == "REFUSED"
    assert "fl.app_not_allowed" in nodes["node-dk"]["reason"]
    assert sorted(document["pooled"]["joined"]) == ["node-fi", "node-fr"]
    written = json.loads(timings.read_text())
    assert len(written["rounds"]) == 2


def test_a_bundle_with_an_unknown_digest_is_refused_before_it_runs(
    federation: LocalFederation, fabs: dict[str, bytes]
) -> None:
    # Same name and version as the allowed app, other bytes: one more file in the bundle.
    tampered = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(fabs["logreg"])) as source,
        zipfile.ZipFile(tampered, "w") as target,
    ):
        for item in source.infolist():
            target.writestr(item, source.read(item))
        target.writestr("ehds_fl_logreg/extra.py", "raise SystemExit('must never run')\n")
    study, _ = run_fl(federation, logreg_parameters(tampered.getvalue(), rounds=1))
    assert study.state is StudyState.FAILED
    for node in study.nodes:
        assert node.state.name == "REFUSED"
        assert node.error_code is ErrorCode.DISCLOSURE_REFUSED, node.error_code
        assert "fl.bundle_unknown" in node.reason
    # Refused before the extract, the worker or the unpacking: no study folder at any node.
    folder = hashlib.sha256(study.id.encode()).hexdigest()[:24]
    assert not list(federation.root.rglob(f"fl/{folder}"))
    for name in federation.nodes:
        assert "must never run" not in federation.processes[name].log_text()


def test_a_node_below_its_minimum_rows_refuses_with_the_rule(
    federation: LocalFederation, fabs: dict[str, bytes]
) -> None:
    parameters = logreg_parameters(fabs["logreg"], rounds=1)
    target = json.loads(json.dumps(parameters["target"]))
    target["yaml"]["demographics"] = {"age": {"min": 98}}
    parameters["target"] = target
    study, _ = run_fl(federation, parameters)
    assert study.state is StudyState.FAILED
    for node in study.nodes:
        assert node.state.name == "REFUSED"
        assert "fl.min_rows" in node.reason


def test_node_level_dp_reports_the_epsilon_of_flowers_accountant(
    federation: LocalFederation, fabs: dict[str, bytes]
) -> None:
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    rounds, noise, delta = 3, 1.2, 1e-5
    parameters = logreg_parameters(
        fabs["logreg"],
        rounds=rounds,
        privacy={"noise_multiplier": noise, "clipping_norm": 5.0, "delta": delta},
    )
    study, document = run_fl(federation, parameters)
    assert study.state is StudyState.COMPLETED, study.state_reason
    assert document is not None
    privacy = document["pooled"]["training"]["state"]["ehds.privacy"]
    assert privacy["mode"] == "node-level"
    nodes = len(federation.nodes)
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=nodes,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    accountant.compose(GaussianPrivacyEvent(noise, nodes, nodes), count=rounds)
    assert privacy["epsilon"] == pytest.approx(accountant.get_epsilon(delta), rel=1e-9)
    assert privacy["delta"] == delta


def test_training_survives_a_coordinator_and_a_node_restart(
    federation: LocalFederation, fabs: dict[str, bytes]
) -> None:
    """Last in this module: it restarts processes of the shared federation. The coordinator
    starts the ServerApp again from its first round; the restarted node starts its worker
    again from the bundle it stored at the join (re-checked against its policy)."""
    import time

    parameters = logreg_parameters(fabs["logreg"], rounds=60)
    with CoordinatorClient(load_client_config(federation.researcher_config)) as client:
        study = client.submit(
            StudySpec(
                title="issue 8: restarts",
                analysis=FL,
                parameters=json.dumps(parameters, sort_keys=True).encode(),
                min_nodes=3,
                deadline_seconds=int(WAIT_S),
                data_permit_id=federation.permit_id,
            )
        )
        deadline = time.monotonic() + 60
        while client.get(study.id).round < 6:
            assert time.monotonic() < deadline, "training did not reach round 6"
            time.sleep(0.1)
    federation.stop("node-fi")
    federation.stop("coordinator")
    federation.start_coordinator()
    federation.start_node("node-fi")
    with CoordinatorClient(load_client_config(federation.researcher_config)) as client:
        final = client.wait(study.id, timeout=WAIT_S)
        assert final.state is StudyState.COMPLETED, final.state_reason
        document = client.results(study.id)
    training = document["pooled"]["training"]
    assert training["model"]["source"] == "context.state"
    assert len([r for r in training["rounds"] if r["type"] == "train"]) == 60
    # The first ServerApp's rounds happened too: the study's round count holds both runs.
    assert final.round > 1 + 2 * 60 + 1
