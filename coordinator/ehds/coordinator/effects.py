"""What a committed change makes the coordinator do outside the database.

A database write (`ehds.coordinator.state.store`) decides everything inside its transaction and
returns an `Effects`: the messages to push to nodes, the studies whose watchers must wake up,
the metrics to move. The dispatcher applies them on the event loop only after the commit, so a
node never hears of a task, and a counter never moves, for a change that was rolled back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from ehds.federation.model import CoordinatorMessage


@dataclass
class Effects:
    # (node name, message) in the order they must be sent.
    messages: list[tuple[str, CoordinatorMessage]] = field(default_factory=list)
    # Studies whose state or tasks changed (Watch streams wake up).
    changed_studies: set[str] = field(default_factory=set)
    # Studies that reached AGGREGATING: aggregate them in a separate transaction.
    aggregate: set[str] = field(default_factory=set)
    # Iterative studies whose next round's tasks were created: dispatch them to the nodes
    # connected now (a separate transaction: which nodes are connected is known on the event
    # loop only; a node away then gets its task when it reconnects, as any task).
    rounds: set[str] = field(default_factory=set)
    # Federated-learning studies whose round (the join, or a batch of Flower messages) ended:
    # the coordinator's FL host hands the replies to the study's ServerApp.
    fl_rounds: set[str] = field(default_factory=set)
    # Open studies and their deadlines, to (re-)arm a timer for.
    deadlines: dict[str, datetime] = field(default_factory=dict)
    # Studies that reached a final state (their timers are disarmed).
    ended_studies: set[str] = field(default_factory=set)
    # Metrics, by analysis label ("name version").
    dispatched: Counter[str] = field(default_factory=Counter)
    completed: list[tuple[str, float]] = field(default_factory=list)  # (label, latency s)
    failed: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    # Rounds of iterative studies that ended: (label, seconds from first dispatch to end).
    rounds_ended: list[tuple[str, float]] = field(default_factory=list)
    studies_submitted: int = 0

    def send(self, node: str, message: CoordinatorMessage) -> None:
        self.messages.append((node, message))

    def merge(self, other: Effects) -> None:
        self.messages.extend(other.messages)
        self.changed_studies |= other.changed_studies
        self.aggregate |= other.aggregate
        self.rounds |= other.rounds
        self.fl_rounds |= other.fl_rounds
        self.deadlines.update(other.deadlines)
        self.ended_studies |= other.ended_studies
        self.dispatched.update(other.dispatched)
        self.completed.extend(other.completed)
        self.failed.update(other.failed)
        self.refused.update(other.refused)
        self.rounds_ended.extend(other.rounds_ended)
        self.studies_submitted += other.studies_submitted
