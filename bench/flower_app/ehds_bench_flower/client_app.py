"""The node side: answer a query with a count, nothing else.

The count comes from the SuperNode's ``--node-config count=N`` so that the ServerApp's sum
proves every node answered (the benchmark knows the counts it gave out). The work is kept
trivial on purpose: what is measured is the engine's dispatch-to-aggregate round trip.
"""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Reply with this node's count."""
    count = int(context.node_config.get("count", 1))
    return Message(RecordDict({"result": MetricRecord({"count": count})}), reply_to=msg)
