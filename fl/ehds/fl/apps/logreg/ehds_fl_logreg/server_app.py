"""The aggregator side: a query round for the pooled standardisation, then Flower's strategy.

Why a query round first: logistic regression by gradient steps needs features on comparable
scales, and the scales must be the same at every node or their models cannot be averaged.
Each node returns per-feature count, sum and sum of squares over its training share; the
server pools them into means and standard deviations and sends them with every train and
evaluate message. The sums leave the node in the clear: they are aggregates over at least the
node's minimum rows, but they are outside the differential-privacy guarantee below.

Node-level DP (``dp-mode = "node-level"``) wraps the strategy in Flower's
``DifferentialPrivacyServerSideFixedClipping``: each node's model update is clipped to
``dp-clipping-norm`` and Gaussian noise of ``dp-noise-multiplier * dp-clipping-norm / nodes``
is added to their (equally weighted) mean. It protects a whole node's contribution, not a
patient's. Epsilon comes from Flower's RDP accountant (dp-accounting), composed once per
released aggregate, never from our own formula; it is left in ``context.state`` for the host.

What the run leaves in ``context.state`` for the host: ``ehds.model`` (intercept and
coefficients over the ORIGINAL feature scale), ``ehds.model-info`` (feature names, and the
pooled means and scales, with which the standardised coefficients are recovered) and, under
DP, ``ehds.privacy``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    Strategy,
)
from flwr.supercore.privacy_accounting import (
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from .model import Vector, pooled_standardisation, to_original_scale
from .settings import number, text

app = ServerApp()

STRATEGIES = ("fedavg", "fedprox", "fedadam")
ACCOUNTANT = (
    "flwr.supercore.privacy_accounting.RdpAccountant (dp-accounting RDP), "
    "no sampling amplification, add-or-remove-one node"
)


@dataclass(frozen=True)
class Settings:
    rounds: int
    strategy: str
    local_epochs: int
    learning_rate: float
    batch_size: int
    proximal_mu: float
    server_learning_rate: float
    server_tau: float
    fraction_evaluate: float
    seed: int
    min_nodes: int
    node_wait: float
    timeout: float
    dp_mode: str
    dp_noise_multiplier: float
    dp_clipping_norm: float
    dp_delta: float

    @classmethod
    def from_run_config(cls, config: dict[str, bool | int | float | str]) -> Settings:
        settings = cls(
            rounds=int(number(config, "num-server-rounds", 5)),
            strategy=text(config, "strategy", "fedavg").lower(),
            local_epochs=int(number(config, "local-epochs", 1)),
            learning_rate=number(config, "learning-rate", 0.1),
            batch_size=int(number(config, "batch-size", 64)),
            proximal_mu=number(config, "proximal-mu", 0.1),
            server_learning_rate=number(config, "server-learning-rate", 0.1),
            server_tau=number(config, "server-tau", 1e-3),
            fraction_evaluate=number(config, "fraction-evaluate", 1.0),
            seed=int(number(config, "seed", 42)),
            min_nodes=int(number(config, "min-nodes", 2)),
            node_wait=number(config, "node-wait-seconds", 60.0),
            timeout=number(config, "round-timeout-seconds", 600.0),
            dp_mode=text(config, "dp-mode", ""),
            dp_noise_multiplier=number(config, "dp-noise-multiplier", 1.0),
            dp_clipping_norm=number(config, "dp-clipping-norm", 1.0),
            dp_delta=number(config, "dp-delta", 1e-5),
        )
        if settings.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
        if settings.dp_mode not in ("", "node-level"):
            raise ValueError('dp-mode must be "node-level" or empty')
        if settings.dp_mode and settings.strategy == "fedadam":
            raise ValueError(
                "node-level DP needs FedAvg's aggregation (fedavg or fedprox): Flower's "
                "accountant covers no other"
            )
        if settings.rounds < 1 or settings.local_epochs < 1 or settings.min_nodes < 1:
            raise ValueError("num-server-rounds, local-epochs and min-nodes must be >= 1")
        return settings


@dataclass(frozen=True)
class Standardisation:
    names: list[str]
    mean: Vector
    scale: Vector


def _wait_for_nodes(grid: Grid, wanted: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= wanted:
            return node_ids
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(node_ids)} of {wanted} nodes online")
        time.sleep(0.2)


def query_round(grid: Grid, node_ids: list[int], settings: Settings) -> Standardisation:
    """Pool every node's per-feature sums into one standardisation."""
    messages = [
        Message(
            RecordDict({"config": ConfigRecord({"seed": settings.seed})}),
            dst_node_id=node_id,
            message_type=MessageType.QUERY,
            group_id="query",
        )
        for node_id in node_ids
    ]
    replies = list(grid.send_and_receive(messages, timeout=settings.timeout))
    answered = [r for r in replies if not r.has_error()]
    if len(answered) < settings.min_nodes:
        raise RuntimeError(
            f"{len(answered)} of {len(node_ids)} nodes answered the query round "
            f"(min-nodes {settings.min_nodes})"
        )
    names: list[str] | None = None
    sums: dict[str, list[Vector]] = {"count": [], "sum": [], "sumsq": []}
    for reply in answered:
        features = reply.content["features"]
        stats = reply.content["stats"]
        if not isinstance(features, ConfigRecord) or not isinstance(stats, ArrayRecord):
            raise RuntimeError("a node's query reply lacks its feature sums")
        raw_names = features["names"]
        if not isinstance(raw_names, list):
            raise RuntimeError("a node sent no feature names")
        reply_names = [str(n) for n in raw_names]
        if names is None:
            names = reply_names
        elif reply_names != names:
            raise RuntimeError("the nodes' extracts do not have the same feature columns")
        for key, parts in sums.items():
            parts.append(stats[key].numpy().astype(np.float64))
    assert names is not None
    mean, scale = pooled_standardisation(
        *(np.sum(sums[k], axis=0) for k in ("count", "sum", "sumsq"))
    )
    return Standardisation(names, mean, scale)


def build_strategy(settings: Settings, nodes: int) -> Strategy:
    """Every node trains every round (the DP wrapper needs a fixed sample size)."""
    evaluate_nodes = max(1, int(np.ceil(settings.fraction_evaluate * nodes)))
    strategy: Strategy
    if settings.strategy == "fedprox":
        strategy = FedProx(
            fraction_evaluate=settings.fraction_evaluate,
            min_train_nodes=nodes,
            min_evaluate_nodes=evaluate_nodes,
            min_available_nodes=nodes,
            proximal_mu=settings.proximal_mu,
        )
    elif settings.strategy == "fedadam":
        strategy = FedAdam(
            fraction_evaluate=settings.fraction_evaluate,
            min_train_nodes=nodes,
            min_evaluate_nodes=evaluate_nodes,
            min_available_nodes=nodes,
            eta=settings.server_learning_rate,
            tau=settings.server_tau,
        )
    else:
        strategy = FedAvg(
            fraction_evaluate=settings.fraction_evaluate,
            min_train_nodes=nodes,
            min_evaluate_nodes=evaluate_nodes,
            min_available_nodes=nodes,
        )
    if settings.dp_mode == "node-level":
        accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=settings.dp_delta,
                population_size=nodes,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )
        )
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy,
            noise_multiplier=settings.dp_noise_multiplier,
            clipping_norm=settings.dp_clipping_norm,
            num_sampled_clients=nodes,
            accountant=accountant,
        )
    return strategy


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = Settings.from_run_config(context.run_config)
    node_ids = _wait_for_nodes(grid, settings.min_nodes, settings.node_wait)
    standardisation = query_round(grid, node_ids, settings)
    p = len(standardisation.names)
    strategy = build_strategy(settings, len(node_ids))
    shared: dict[str, int | float | list[float]] = {
        "feature-mean": [float(v) for v in standardisation.mean],
        "feature-scale": [float(v) for v in standardisation.scale],
        "seed": settings.seed,
    }
    train_config = ConfigRecord(
        {
            **shared,
            "local-epochs": settings.local_epochs,
            "learning-rate": settings.learning_rate,
            "batch-size": settings.batch_size,
            "uniform-weight": settings.dp_mode == "node-level",
        }
    )
    initial = ArrayRecord(
        {"intercept": Array(np.zeros(1, dtype=np.float64)), "coef": Array(np.zeros(p))}
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=settings.rounds,
        timeout=settings.timeout,
        train_config=train_config,
        evaluate_config=ConfigRecord(dict(shared)),
    )
    final = result.arrays if len(result.arrays) else initial
    intercept, coef = to_original_scale(
        float(final["intercept"].numpy()[0]),
        final["coef"].numpy().astype(np.float64),
        standardisation.mean,
        standardisation.scale,
    )
    context.state["ehds.model"] = ArrayRecord(
        {"intercept": Array(np.array([intercept])), "coef": Array(coef)}
    )
    context.state["ehds.model-info"] = ConfigRecord(
        {
            "model": "logistic-regression",
            "scale": "original",
            "feature-names": list(standardisation.names),
            "feature-means": [float(v) for v in standardisation.mean],
            "feature-scales": [float(v) for v in standardisation.scale],
            "strategy": settings.strategy,
            "rounds": settings.rounds,
            "nodes": len(node_ids),
        }
    )
    if isinstance(strategy, DifferentialPrivacyServerSideFixedClipping):
        spent = strategy.privacy_spent()
        assert spent is not None
        context.state["ehds.privacy"] = ConfigRecord(
            {
                "mode": "node-level",
                "epsilon": spent.epsilon,
                "delta": spent.delta,
                "noise-multiplier": settings.dp_noise_multiplier,
                "clipping-norm": settings.dp_clipping_norm,
                "releases": spent.num_releases,
                "nodes": len(node_ids),
                "accountant": ACCOUNTANT,
            }
        )
