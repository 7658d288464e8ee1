"""The `fl` analysis' parameters and round plumbing (no Flower, no processes)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from ehds.analyses.base import InvalidParametersError
from ehds.analyses.fl.analysis import (
    FederatedLearning,
    base_parameters,
    is_hosted,
    node_parameters,
    round_input,
)
from ehds.analyses.iteration import round_parameters
from ehds.analyses.registry import default_registry
from ehds.federation.model import AnalysisRef

FAB = b"PK\x05\x06" + b"\x00" * 18  # an empty zip: the digest is what matters here
COHORT = {
    "name": "t",
    "yaml": {
        "concept_sets": {"t": {"include": [{"concept": 201826}]}},
        "entry": {"events": [{"condition": "t"}]},
    },
}


def parameters(**extra: Any) -> dict[str, Any]:
    return {
        "app": {
            "name": "ehds-logreg",
            "version": "1.0.0",
            "sha256": hashlib.sha256(FAB).hexdigest(),
            "fab": base64.b64encode(FAB).decode(),
        },
        "target": COHORT,
        "outcome": {"cohort": COHORT, "start_day": 1, "end_day": 365},
        "covariates": [{"kind": "age", "name": "age"}],
        **extra,
    }


def test_fl_is_registered_and_hosted() -> None:
    analysis = default_registry().get(FederatedLearning.ref())
    assert is_hosted(analysis)
    assert not is_hosted(default_registry().get(AnalysisRef("glm", "1.0.0")))


def test_a_bundle_whose_digest_differs_from_the_stated_one_is_refused() -> None:
    bad = parameters()
    bad["app"]["sha256"] = "0" * 64
    with pytest.raises(InvalidParametersError, match=r"parameters\.app"):
        FederatedLearning().parse_parameters(bad)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"outcome": {"measurement_concept_ids": [1]}}, "outcome.cohort"),
        ({"rounds": 0}, "rounds"),
        ({"strategy": "scaffold"}, "strategy"),
        ({"run_config": {"bad key!": 1}}, "run_config"),
        ({"privacy": {"noise_multiplier": 0, "clipping_norm": 1}}, "privacy"),
        ({"covariates": [{"kind": "age", "name": "y"}]}, "called 'y'"),
    ],
)
def test_bad_parameters_are_named(change: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidParametersError, match=where.split(".", maxsplit=1)[0]):
        FederatedLearning().parse_parameters(parameters(**change))


def test_the_run_config_maps_the_study_onto_the_apps_keys() -> None:
    params = FederatedLearning().parse_parameters(
        parameters(
            rounds=7,
            strategy="fedprox",
            privacy={"noise_multiplier": 1.1, "clipping_norm": 2.0},
            run_config={"learning-rate": 0.3},
        )
    )
    assert params.app_run_config() == {
        "num-server-rounds": 7,
        "local-epochs": 1,
        "strategy": "fedprox",
        "dp-mode": "node-level",
        "dp-noise-multiplier": 1.1,
        "dp-clipping-norm": 2.0,
        "dp-delta": 1e-5,
        "learning-rate": 0.3,
    }


def test_each_node_task_carries_only_its_own_message_and_no_bundle() -> None:
    analysis = FederatedLearning()
    base = analysis.encode_parameters(analysis.parse_parameters(parameters()))
    data = round_input(3, {"node-b": "Yg==", "node-a": "YQ=="})
    data.pop("number")
    round3 = round_parameters(base_parameters(base), 3, data)
    mine = json.loads(node_parameters(round3, "node-a"))
    assert mine["round"] == {"number": 3, "messages": {"node-a": "YQ=="}}
    assert mine["app"]["fab"] is None
    assert mine["app"]["sha256"] == hashlib.sha256(FAB).hexdigest()
    parsed = analysis.parse_parameters(node_parameters(round3, "node-b"))
    assert parsed.round is not None
    assert parsed.round.messages == {"node-b": "Yg=="}
    with pytest.raises(ValueError, match="node-c"):
        node_parameters(round3, "node-c")


def test_the_table_lists_every_round_metric_with_each_nodes_value() -> None:
    header, rows = FederatedLearning().table(
        {
            "training": {
                "rounds": [
                    {
                        "round": "1",
                        "type": "evaluate",
                        "aggregate": {"auc": 0.8},
                        "nodes": {"node-a": {"auc": 0.7}, "node-b": {"auc": 0.9}},
                    }
                ]
            }
        }
    )
    assert header[:4] == ["round", "type", "metric", "aggregate"]
    assert rows == [["1", "evaluate", "auc", 0.8, json.dumps({"node-a": 0.7, "node-b": 0.9})]]
