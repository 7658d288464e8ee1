"""FedAvg from flwr.serverapp.strategy, a zero model to start with, the result in the state."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run num-server-rounds of FedAvg train + evaluate over every node."""
    config = context.run_config
    if bool(config["fail"]):
        raise RuntimeError("planned failure")
    size = int(config["model.size"])
    nodes = int(config["min-nodes"])
    initial = ArrayRecord(array_dict={"w": Array(np.zeros(size)), "b": Array(np.zeros(1))})
    strategy = FedAvg(min_train_nodes=nodes, min_evaluate_nodes=nodes, min_available_nodes=nodes)
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=int(config["num-server-rounds"]),
        timeout=float(config["round-timeout"]),
    )
    if bool(config["save-model"]):
        context.state["ehds.model"] = result.arrays
    context.state["ehds.info"] = ConfigRecord({"rounds": int(config["num-server-rounds"])})
    context.state["other"] = ConfigRecord({"kept": False})
