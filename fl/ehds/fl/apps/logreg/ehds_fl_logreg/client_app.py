"""The node side: answer the query round with feature sums, train, evaluate.

The only data the app reads is the file the node names in ``node_config["data-path"]``: the
study's feature extract (column ``y`` plus one float column per feature, in the file's
column order). Rows are split once, by a seeded draw stratified by outcome, into a training
share and a held-out share for evaluation, so that every round evaluates on the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from .model import Matrix, TrainSettings, Vector, evaluate, train
from .settings import number

app = ClientApp()

OUTCOME = "y"


@dataclass(frozen=True)
class NodeData:
    names: list[str]
    train_x: Matrix
    train_y: Vector
    test_x: Matrix
    test_y: Vector


_CACHE: dict[tuple[str, int, int, float], NodeData] = {}


def _split(
    y: Vector, fraction: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Row indices (training, held out), stratified by outcome."""
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for value in (0.0, 1.0):
        rows = np.flatnonzero(y == value)
        take = round(fraction * len(rows))
        held.extend(rng.permutation(rows)[:take].tolist())
    mask = np.zeros(len(y), dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask).astype(np.int64), np.flatnonzero(mask).astype(np.int64)


def load(path: Path, holdout: float, seed: int) -> NodeData:
    """The extract, split; kept for the life of the (long-lived) worker process."""
    key = (str(path), path.stat().st_mtime_ns, seed, holdout)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    table = pq.read_table(path)
    if OUTCOME not in table.column_names:
        raise ValueError("the extract has no outcome column 'y'")
    names = [c for c in table.column_names if c != OUTCOME]
    if not names:
        raise ValueError("the extract has no feature columns")
    y = table.column(OUTCOME).to_numpy().astype(np.float64)
    x = np.column_stack([table.column(c).to_numpy().astype(np.float64) for c in names])
    if not (np.all(np.isfinite(x)) and np.all((y == 0.0) | (y == 1.0))):
        raise ValueError("the extract holds missing values or a non-binary outcome")
    train_rows, test_rows = _split(y, holdout, seed)
    data = NodeData(names, x[train_rows], y[train_rows], x[test_rows], y[test_rows])
    _CACHE.clear()
    _CACHE[key] = data
    return data


def _data(context: Context, config: ConfigRecord) -> NodeData:
    path = context.node_config.get("data-path")
    if not isinstance(path, str) or not path:
        raise ValueError("node_config has no data-path (the node's feature extract)")
    holdout = number(context.run_config, "holdout-fraction", 0.2)
    seed = int(number(config, "seed", number(context.run_config, "seed", 42)))
    return load(Path(path), holdout, seed)


def _standardise(data_x: Matrix, config: ConfigRecord) -> Matrix:
    mean = np.asarray(config["feature-mean"], dtype=np.float64)
    scale = np.asarray(config["feature-scale"], dtype=np.float64)
    if mean.shape != (data_x.shape[1],) or scale.shape != mean.shape:
        raise ValueError("the server's standardisation does not match the extract's features")
    result: Matrix = (data_x - mean) / scale
    return result


def _parameters(arrays: ArrayRecord) -> tuple[float, Vector]:
    intercept = arrays["intercept"].numpy().astype(np.float64)
    coef = arrays["coef"].numpy().astype(np.float64)
    return float(intercept[0]), coef


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Per-feature count, sum and sum of squares over the training share, and the feature
    names (the server pools them into the standardisation every node then uses)."""
    config = msg.content.config_records.get("config", ConfigRecord())
    data = _data(context, config)
    x = data.train_x
    stats = ArrayRecord(
        {
            "count": Array(np.full(x.shape[1], float(x.shape[0]))),
            "sum": Array(x.sum(axis=0)),
            "sumsq": Array((x**2).sum(axis=0)),
        }
    )
    features = ConfigRecord({"names": list(data.names)})
    return Message(RecordDict({"stats": stats, "features": features}), reply_to=msg)


@app.train()
def train_step(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    assert isinstance(config, ConfigRecord)
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    data = _data(context, config)
    intercept, coef = _parameters(arrays)
    settings = TrainSettings(
        epochs=int(number(config, "local-epochs", 1)),
        learning_rate=number(config, "learning-rate", 0.1),
        batch_size=int(number(config, "batch-size", 64)),
        proximal_mu=number(config, "proximal-mu", 0.0),
        # Fresh, reproducible batch order per round and node.
        seed=int(number(config, "seed", 42)) * 1_000_003
        + int(number(config, "server-round", 0)) * 7919
        + context.node_id % 1_000_003,
    )
    intercept, coef, loss = train(
        _standardise(data.train_x, config), data.train_y, intercept, coef, settings
    )
    # Under node-level DP every node's update weighs the same (the accountant's sensitivity
    # bound assumes it, and Flower refuses unequal weights), and the row count stays home.
    uniform = bool(config.get("uniform-weight", False))
    weight = 1 if uniform else len(data.train_y)
    reply = RecordDict(
        {
            "arrays": ArrayRecord({"intercept": Array(np.array([intercept])), "coef": Array(coef)}),
            "metrics": MetricRecord({"num-examples": weight, "train-loss": loss}),
        }
    )
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate_step(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    assert isinstance(config, ConfigRecord)
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    data = _data(context, config)
    intercept, coef = _parameters(arrays)
    metrics = MetricRecord({"num-examples": len(data.test_y)})
    for key, value in evaluate(
        _standardise(data.test_x, config), data.test_y, intercept, coef
    ).items():
        metrics[key] = value
    reply = RecordDict({"metrics": metrics})
    return Message(reply, reply_to=msg)
