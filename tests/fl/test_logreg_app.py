"""The built-in Flower app `ehds-logreg`, run against an in-process Grid.

The data come from a KNOWN logistic model over features whose distributions differ by node
(location, prevalence and scale shifts), split across three nodes; a held-out pooled test set
comes from the same mixture. The reference is statsmodels' Logit on the pooled training rows.
The app is loaded from its directory with Flower's own loader, as every host loads it; the
Grid here delivers each message to the node's ClientApp in the same process.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import statsmodels.api as sm
from scipy.stats import mannwhitneyu

with warnings.catch_warnings():
    # typer, which flwr's logger imports, re-exports click.utils helpers that click 8.5
    # deprecates: warned once, at import, by Flower's dependencies, not by this code.
    warnings.filterwarnings("ignore", r"'click\.utils\.\w+' is deprecated", DeprecationWarning)
    from flwr.app import Context, Error, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.supercore.object_ref import load_app
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

from ehds.fl.builtin import builtin_app_dir
from ehds.fl.bundle import read_app_info

APP_DIR = builtin_app_dir("ehds-logreg")
FEATURES = ["age10", "female", "sbp", "noise"]
TRUE_INTERCEPT = -6.0
TRUE_COEF = np.array([0.45, -0.5, 0.025, 0.0])
NODE_PROFILES = {
    # rows, age10 mean, female share, sbp mean, sbp sd
    "dk": (1500, 5.5, 0.55, 135.0, 15.0),
    "fi": (2500, 6.5, 0.45, 145.0, 18.0),
    "fr": (1000, 4.8, 0.60, 128.0, 12.0),
}


def simulate_rows(rng: np.random.Generator, rows: int, profile: tuple[Any, ...]) -> np.ndarray:
    _, age_mean, female, sbp_mean, sbp_sd = profile
    x = np.column_stack(
        [
            rng.normal(age_mean, 1.2, rows),
            rng.binomial(1, female, rows).astype(float),
            rng.normal(sbp_mean, sbp_sd, rows),
            rng.normal(0.0, 1.0, rows),
        ]
    )
    p = 1.0 / (1.0 + np.exp(-(TRUE_INTERCEPT + x @ TRUE_COEF)))
    y = rng.binomial(1, p).astype(float)
    return np.column_stack([y, x])


@dataclass
class Synthetic:
    paths: dict[str, Path]
    train: np.ndarray
    test: np.ndarray


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    rng = np.random.default_rng(20260521)
    folder = tmp_path_factory.mktemp("logreg")
    paths: dict[str, Path] = {}
    parts, tests = [], []
    for node, profile in NODE_PROFILES.items():
        rows = simulate_rows(rng, profile[0], profile)
        parts.append(rows)
        tests.append(simulate_rows(rng, profile[0] // 2, profile))
        table = pa.table({"y": rows[:, 0], **{f: rows[:, i + 1] for i, f in enumerate(FEATURES)}})
        paths[node] = folder / f"{node}.parquet"
        pq.write_table(table, paths[node])
    return Synthetic(paths, np.vstack(parts), np.vstack(tests))


# --------------------------------------------------------------------------- in-process grid


@dataclass
class LocalGrid(Grid):
    """Delivers each pushed message to its node's ClientApp at once, in this process; a
    ClientApp exception becomes a Flower error reply, as a SuperNode sends."""

    client: ClientApp
    contexts: dict[int, Context]
    replies: dict[str, Message] = field(default_factory=dict)
    log: list[tuple[str, int, Message]] = field(default_factory=list)
    _run: Run | None = None

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        assert self._run is not None
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = uuid.uuid4().hex
            message.metadata.__dict__["_message_id"] = message_id
            node = message.metadata.dst_node_id
            try:
                reply = self.client(message, self.contexts[node])
            except Exception as error:
                reply = Message(Error(code=1, reason=type(error).__name__), reply_to=message)
            self.log.append((message.metadata.message_type, node, reply))
            self.replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def metrics(self, message_type: str) -> list[dict[str, Any]]:
        """The MetricRecord of every reply of ``message_type``, in order."""
        out: list[dict[str, Any]] = []
        for kind, _, reply in self.log:
            if kind == message_type and not reply.has_error():
                out.append(dict(next(iter(reply.content.metric_records.values()))))
        return out


def run_app(paths: Mapping[str, Path], **overrides: Any) -> tuple[Context, LocalGrid]:
    server = cast(ServerApp, load_app(read_app_info(APP_DIR).serverapp, ValueError, APP_DIR))
    client = cast(ClientApp, load_app(read_app_info(APP_DIR).clientapp, ValueError, APP_DIR))
    run_config = dict(read_app_info(APP_DIR).config) | overrides
    contexts = {
        1000 + i: Context(
            run_id=7,
            node_id=1000 + i,
            node_config={"data-path": str(path), "node-name": node},
            state=RecordDict(),
            run_config=dict(run_config),
        )
        for i, (node, path) in enumerate(sorted(paths.items()))
    }
    grid = LocalGrid(client, contexts)
    # What a SuperLink's ServerApp process sets before it runs an app (messages take their
    # run and source from it).
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 1
    context = Context(
        run_id=7, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    server(grid, context)
    return context, grid


def final_model(context: Context) -> tuple[float, np.ndarray]:
    model = context.state.array_records["ehds.model"]
    return float(model["intercept"].numpy()[0]), model["coef"].numpy()


def auc(y: np.ndarray, score: np.ndarray) -> float:
    positives, negatives = score[y == 1], score[y == 0]
    return float(mannwhitneyu(positives, negatives).statistic) / (len(positives) * len(negatives))


def pooled_logit(train: np.ndarray) -> np.ndarray:
    fit = sm.Logit(train[:, 0], sm.add_constant(train[:, 1:])).fit(disp=0)
    return np.asarray(fit.params)


def test_app_metadata() -> None:
    info = read_app_info(APP_DIR)
    assert (info.name, info.version) == ("ehds-logreg", "1.0.0")
    assert info.serverapp == "ehds_fl_logreg.server_app:app"
    assert info.config["strategy"] == "fedavg"


@pytest.mark.parametrize(
    ("strategy", "overrides"),
    [
        ("fedavg", {}),
        ("fedprox", {"proximal-mu": 0.5}),
        # Adam's server steps keep a constant size: full-batch local steps keep the client
        # noise out of its pseudo-gradients, and more rounds of smaller steps settle it.
        (
            "fedadam",
            {
                "server-learning-rate": 0.03,
                "num-server-rounds": 30,
                "batch-size": 0,
                "local-epochs": 10,
                "learning-rate": 0.5,
            },
        ),
    ],
)
def test_federated_auc_within_002_of_pooled_logit(
    synthetic: Synthetic, strategy: str, overrides: dict[str, Any]
) -> None:
    settings: dict[str, Any] = {"num-server-rounds": 8, "strategy": strategy} | overrides
    context, grid = run_app(synthetic.paths, **settings)
    intercept, coef = final_model(context)
    test_y, test_x = synthetic.test[:, 0], synthetic.test[:, 1:]
    federated = auc(test_y, intercept + test_x @ coef)
    reference = pooled_logit(synthetic.train)
    pooled = auc(test_y, reference[0] + test_x @ reference[1:])
    truth = auc(test_y, TRUE_INTERCEPT + test_x @ TRUE_COEF)
    print(f"{strategy}: AUC federated {federated:.4f} pooled {pooled:.4f} truth {truth:.4f}")
    assert abs(federated - pooled) <= 0.02
    # converged: the training loss falls, and the model is near the pooled fit
    train = grid.metrics("train")
    train_loss = [
        sum(m["train-loss"] * m["num-examples"] for m in train[i : i + 3])
        / sum(m["num-examples"] for m in train[i : i + 3])
        for i in range(0, len(train), 3)
    ]
    assert len(train_loss) == settings["num-server-rounds"]
    assert train_loss[-1] < train_loss[0]
    np.testing.assert_allclose(coef, reference[1:], atol=0.15)
    # every round evaluated at every node, with the full set of metrics
    evaluations = grid.metrics("evaluate")
    assert len(evaluations) == 3 * int(settings["num-server-rounds"])
    assert set(evaluations[-1]) == {
        "num-examples",
        "eval-loss",
        "auc",
        "brier",
        "calibration-in-the-large",
        "calibration-slope",
    }
    assert 0.5 < evaluations[-1]["calibration-slope"] < 1.5
    info = context.state.config_records["ehds.model-info"]
    assert info["feature-names"] == FEATURES
    assert info["scale"] == "original"
    assert "ehds.privacy" not in context.state


def test_node_level_dp_reports_the_accountants_epsilon(synthetic: Synthetic) -> None:
    rounds, noise, clip, delta = 4, 0.8, 0.5, 1e-5
    context, grid = run_app(
        synthetic.paths,
        **{
            "num-server-rounds": rounds,
            "dp-mode": "node-level",
            "dp-noise-multiplier": noise,
            "dp-clipping-norm": clip,
            "dp-delta": delta,
        },
    )
    expected = RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=3,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    for _ in range(rounds):
        expected.compose(
            GaussianPrivacyEvent(noise_multiplier=noise, sample_size=3, population_size=3)
        )
    privacy = context.state.config_records["ehds.privacy"]
    print(f"node-level DP epsilon {privacy['epsilon']!r} at delta {delta} after {rounds} rounds")
    assert privacy["epsilon"] == expected.get_epsilon(delta)
    assert privacy["mode"] == "node-level"
    assert privacy["releases"] == rounds
    assert (privacy["noise-multiplier"], privacy["clipping-norm"], privacy["delta"]) == (
        noise,
        clip,
        delta,
    )
    # uniform weights: the train replies state no row counts
    assert all(m["num-examples"] == 1 for m in grid.metrics("train"))
    assert "ehds.model" in context.state


def test_dp_with_fedadam_is_refused(synthetic: Synthetic) -> None:
    with pytest.raises(ValueError, match="node-level DP needs FedAvg"):
        run_app(synthetic.paths, **{"strategy": "fedadam", "dp-mode": "node-level"})


def test_mismatched_feature_columns_stop_the_run(synthetic: Synthetic, tmp_path: Path) -> None:
    other = tmp_path / "other.parquet"
    table = pq.read_table(synthetic.paths["fr"]).rename_columns(["y", "a", "b", "c", "d"])
    pq.write_table(table, other)
    with pytest.raises(RuntimeError, match="same feature columns"):
        run_app({"dk": synthetic.paths["dk"], "fi": synthetic.paths["fi"], "fr": other})


def test_failing_node_is_left_out_of_aggregation(synthetic: Synthetic, tmp_path: Path) -> None:
    """A node without its extract answers with Flower errors; the two others carry the run."""
    paths = dict(synthetic.paths) | {"fr": tmp_path / "missing.parquet"}
    context, grid = run_app(paths, **{"num-server-rounds": 2})
    assert "ehds.model" in context.state
    assert context.state.config_records["ehds.model-info"]["nodes"] == 3
    assert len(grid.metrics("train")) == 4


def test_model_metrics_against_independent_formulas() -> None:
    from ehds.fl.apps.logreg.ehds_fl_logreg import model

    rng = np.random.default_rng(3)
    p = rng.uniform(0.01, 0.99, 4000)
    y = rng.binomial(1, p).astype(float)
    assert model.auc(y, np.round(p, 1)) == pytest.approx(auc(y, np.round(p, 1)), abs=1e-12)
    citl, slope = model.calibration(y, p)
    assert citl == pytest.approx(y.mean() - p.mean())
    lp = np.log(p / (1 - p))
    reference = sm.Logit(y, sm.add_constant(lp)).fit(disp=0).params
    assert slope == pytest.approx(reference[1], rel=1e-6)
