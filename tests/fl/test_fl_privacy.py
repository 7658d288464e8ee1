"""Node-level DP in the built-in app: Flower's wrapper and accountant, configured as stated.

The epsilon a run reports is checked against the accountant in test_logreg_app; here, that
the app hands Flower's DP wrapper and RDP accountant the parameters the study states, and
refuses what the accountant cannot cover.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

with warnings.catch_warnings():
    # typer, which flwr's logger imports, re-exports click.utils helpers that click 8.5
    # deprecates: warned once, at import, by Flower's dependencies, not by this code.
    warnings.filterwarnings("ignore", r"'click\.utils\.\w+' is deprecated", DeprecationWarning)
    from flwr.serverapp.strategy import (
        DifferentialPrivacyServerSideFixedClipping,
        FedAdam,
        FedAvg,
        FedProx,
    )
    from flwr.supercore.privacy_accounting import NeighboringRelation, SamplingMethod
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    from ehds.fl.apps.logreg.ehds_fl_logreg.server_app import Settings, build_strategy

DP: dict[str, Any] = {
    "dp-mode": "node-level",
    "dp-noise-multiplier": 1.3,
    "dp-clipping-norm": 0.7,
    "dp-delta": 1e-6,
}


@pytest.mark.parametrize(("name", "inner"), [("fedavg", FedAvg), ("fedprox", FedProx)])
def test_node_level_dp_wraps_the_strategy_with_flowers_accountant(
    name: str, inner: type[FedAvg]
) -> None:
    strategy = build_strategy(Settings.from_run_config({"strategy": name} | DP), 4)
    assert isinstance(strategy, DifferentialPrivacyServerSideFixedClipping)
    assert type(strategy.strategy) is inner
    assert (strategy.noise_multiplier, strategy.clipping_norm) == (1.3, 0.7)
    assert strategy.num_sampled_clients == 4
    accountant = strategy.accountant
    assert isinstance(accountant, RdpAccountant)
    assert accountant.config.population_size == 4
    assert accountant.config.target_delta == 1e-6
    assert accountant.config.sampling_method is SamplingMethod.NO_AMPLIFICATION
    assert accountant.config.neighboring_relation is NeighboringRelation.ADD_OR_REMOVE_ONE
    # every node trains every round: the sample is the population
    assert isinstance(strategy.strategy, FedAvg)
    assert strategy.strategy.fraction_train == 1.0
    assert strategy.strategy.min_train_nodes == 4


def test_without_dp_the_strategy_is_plain() -> None:
    strategy = build_strategy(Settings.from_run_config({"strategy": "fedadam"}), 3)
    assert type(strategy) is FedAdam


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"strategy": "fedadam"} | DP, "node-level DP needs FedAvg"),
        ({"dp-mode": "record-level"}, "dp-mode must be"),
        ({"strategy": "scaffold"}, "strategy must be one of"),
        ({"num-server-rounds": 0}, ">= 1"),
        ({"dp-noise-multiplier": "high"}, "must be a number"),
    ],
)
def test_settings_the_accountant_cannot_cover_are_refused(
    config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_run_config(config)
