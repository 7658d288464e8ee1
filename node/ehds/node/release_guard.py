"""The differencing guard: the node's memory of which populations it described, to whom.

Why: suppressing small cells protects one result, not two. A researcher who gets the counts of
a cohort and then of the same cohort minus two persons learns about those two persons by
subtraction, although every released cell met the threshold. So the node remembers, per data
permit and researcher (the *release key*), every population it has described, and refuses a new
population whose symmetric difference with an earlier one is 1 to threshold-1 persons. An
identical re-run (difference 0) discloses nothing new and is allowed.

Where the memory lives: table ``ehds_released_populations`` in the engine's results place
(never the CDM), one row per (release, person). Everything is computed inside the engine: the
person ids never reach Python, only two counts per check do.

What is recorded is what an analysis *asked* to describe (the check runs before it computes):
if the task then fails, the population stays recorded. That errs on the side of refusing.

Concurrency: two tasks with the same release key must not both pass the check before either
has recorded its population (each would be checked against the memory without the other). A
lock per release key, shared by every guard of the process, serialises check-and-record; a
node runs one process per results place (`ehds.node.state` enforces one per state file).
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import TYPE_CHECKING, Final

import ibis
from ibis.common.exceptions import TableNotFound

from ehds.analyses.base import DisclosureRefusedError

if TYPE_CHECKING:
    import ibis.expr.types as ir

    from ehds.analyses.engine import IbisCdm

__all__ = [
    "DIFFERENCING_RULE",
    "RELEASED_POPULATIONS_TABLE",
    "NodeReleaseGuard",
    "ReleaseLocks",
    "release_key",
]

RELEASED_POPULATIONS_TABLE: Final = "ehds_released_populations"
DIFFERENCING_RULE: Final = "differencing"

_SCHEMA: Final = ibis.schema(
    {
        "release_key": "string",
        # One release: several releases may share a fingerprint (the same cohort definition
        # run on a CDM that changed in between), and each is compared on its own.
        "release_id": "string",
        "fingerprint": "string",
        "person_id": "int64",
    }
)


def release_key(permit_id: str, researcher: str) -> str:
    """The key under which releases are remembered: canonical JSON of (permit, researcher), so
    that no choice of names can make two different pairs collide."""
    return json.dumps([permit_id, researcher], ensure_ascii=False, separators=(",", ":"))


class ReleaseLocks:
    """One lock per release key, plus one for creating the table.

    Why shared: the runner builds a guard per task, and the tasks of one node run concurrently
    in one process; the locks must be common to all of them. `PROCESS_RELEASE_LOCKS` is that
    shared instance (tests may pass their own).
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self.create = threading.Lock()

    def for_key(self, key: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.Lock()
            return lock


PROCESS_RELEASE_LOCKS: Final = ReleaseLocks()
"""The locks of this process: what they protect (the results place) is shared by its tasks."""


class NodeReleaseGuard:
    """The `ehds.analyses.base.ReleaseGuard` of one task: its permit, researcher and threshold.

    ``min_cell_count`` is the threshold the task applies (the larger of the site policy's and
    the study's): a difference of 1 to ``min_cell_count - 1`` persons is refused.
    """

    def __init__(
        self,
        permit_id: str,
        researcher: str,
        min_cell_count: int,
        *,
        locks: ReleaseLocks = PROCESS_RELEASE_LOCKS,
    ) -> None:
        if min_cell_count < 1:
            raise ValueError(f"min_cell_count must be at least 1 (got {min_cell_count})")
        self.key = release_key(permit_id, researcher)
        self.min_cell_count = min_cell_count
        self._locks = locks

    def check_population(self, engine: IbisCdm, persons: ir.Table, *, fingerprint: str) -> None:
        """Refuse (`DisclosureRefusedError`) or record ``persons`` (column ``person_id``).

        An identical re-run of a population released before under this key passes and is not
        stored again; any other population that passes is recorded as a new release.
        """
        population = persons.select(person_id=persons.person_id.cast("int64")).distinct()
        released = self._released(engine)
        with self._locks.for_key(self.key):
            near, identical = self._compare(engine, released, population)
            if near:
                raise DisclosureRefusedError(
                    DIFFERENCING_RULE,
                    f"the population differs from one already described under this data permit "
                    f"to this researcher by fewer than {self.min_cell_count} persons (threshold "
                    f"{self.min_cell_count}: re-run it unchanged, or change it by at least "
                    f"{self.min_cell_count} persons)",
                )
            if identical:
                return
            self._record(engine, population, fingerprint)

    # ------------------------------------------------------------------ inside the engine

    def _released(self, engine: IbisCdm) -> ir.Table:
        """The table of released populations, created on first use."""
        with self._locks.create:
            try:
                return engine.results_table(RELEASED_POPULATIONS_TABLE)
            except TableNotFound:
                engine.backend.create_table(
                    RELEASED_POPULATIONS_TABLE, schema=_SCHEMA, database=engine.results_database
                )
                return engine.results_table(RELEASED_POPULATIONS_TABLE)

    def _compare(
        self, engine: IbisCdm, released: ir.Table, population: ir.Table
    ) -> tuple[bool, bool]:
        """(some earlier release differs by 1..T-1 persons, some earlier release is identical).

        Per earlier release R and new population N: |R △ N| = |R| + |N| - 2 |R ∩ N|, each term a
        count inside the engine; only the two answers come back.
        """
        mine = released.filter(released.release_key == self.key)
        sizes = mine.group_by("release_id").aggregate(released_size=mine.count())
        shared = mine.semi_join(population, "person_id")
        common = shared.group_by("release_id").aggregate(shared_size=shared.count())
        total = population.aggregate(population_size=population.count())
        joined = sizes.left_join(common, "release_id").cross_join(total)
        per_release = joined.select(
            apart=joined["released_size"]
            + joined["population_size"]
            - 2 * joined["shared_size"].fill_null(0)
        )
        apart = per_release["apart"]
        # ifelse, not a cast: PostgreSQL has no cast from boolean to bigint.
        verdict = per_release.aggregate(
            near=ibis.ifelse(apart.between(1, self.min_cell_count - 1), 1, 0).sum(),
            identical=ibis.ifelse(apart == 0, 1, 0).sum(),
        )
        [row] = engine.collect(verdict, max_rows=1)
        return bool(row["near"] or 0), bool(row["identical"] or 0)

    def _record(self, engine: IbisCdm, population: ir.Table, fingerprint: str) -> None:
        rows = population.select(
            release_key=ibis.literal(self.key, type="string"),
            release_id=ibis.literal(uuid.uuid4().hex, type="string"),
            fingerprint=ibis.literal(fingerprint, type="string"),
            person_id=population.person_id,
        )
        engine.backend.insert(RELEASED_POPULATIONS_TABLE, rows, database=engine.results_database)
