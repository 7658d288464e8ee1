"""Train: add this node's ``value`` to every array; evaluate: report it; query: test probes.

The node's ``value`` and ``n`` (num-examples) come from its node config, so the tests know
the FedAvg result exactly. The query handler runs probes inside the worker: a TCP connect to
a given port (must fail: the worker is isolated), a sleep (timeouts), a raise (errors) and a
call counter kept in Context.state (the worker is long-lived).
"""

from __future__ import annotations

import ctypes
import socket
import struct
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _count_call(context: Context) -> int:
    record = context.state.get("calls")
    calls = int(str(record["calls"])) + 1 if isinstance(record, MetricRecord) else 1
    context.state["calls"] = MetricRecord({"calls": calls})
    return calls


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local "update": every array plus this node's value."""
    value = float(context.node_config["value"])
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    updated = ArrayRecord(
        array_dict={key: Array(array.numpy() + value) for key, array in arrays.items()}
    )
    metrics = MetricRecord(
        {
            "num-examples": int(context.node_config["n"]),
            "train-loss": value,
            "calls": _count_call(context),
        }
    )
    return Message(RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Report this node's value as its loss."""
    node = context.node_config
    metrics = MetricRecord({"num-examples": int(node["n"]), "eval-loss": float(node["value"])})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def _connect(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return "connected"
    except OSError as error:
        return type(error).__name__


def _connect_below_python(host: str, port: int) -> str:
    """connect(2) through libc: no audit event, so only the network namespace can stop it."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    if fd < 0:
        return f"socket errno {ctypes.get_errno()}"
    address = struct.pack("=H", socket.AF_INET) + struct.pack(">H", port)
    address += socket.inet_aton(host) + bytes(8)
    try:
        code = libc.connect(fd, ctypes.c_char_p(address), len(address))
        return "connected" if code == 0 else f"errno {ctypes.get_errno()}"
    finally:
        libc.close(fd)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The probe named by the message's "probe" ConfigRecord."""
    probe = msg.content["probe"]
    assert isinstance(probe, ConfigRecord)
    action = str(probe["action"])
    outcome = "ok"
    if action == "connect":
        outcome = _connect(str(probe["host"]), int(str(probe["port"])))
    elif action == "connect-raw":
        outcome = _connect_below_python(str(probe["host"]), int(str(probe["port"])))
    elif action == "sleep":
        time.sleep(float(str(probe["seconds"])))
    elif action == "raise":
        raise RuntimeError("planned failure")
    node = context.node_config
    reply = RecordDict(
        {
            "result": ConfigRecord({"outcome": outcome, "node": str(node["node-name"])}),
            "metrics": MetricRecord({"calls": _count_call(context), "size": int(np.ones(2).size)}),
        }
    )
    return Message(reply, reply_to=msg)
