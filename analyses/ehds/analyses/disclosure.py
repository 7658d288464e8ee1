"""Cell suppression: which counts a node may release, applied before anything leaves it.

Why two steps. *Primary* suppression hides every count ``0 < v < threshold``: a small cell
could single out a person. Zero is released (it identifies nobody, and hiding zeros would make
the table's shape depend on the data). But a table rarely travels alone: an analysis releases
the overall count beside its strata, and each stratification beside their cross, so a hidden
cell can often be recomputed by subtraction (``total - sum of the other parts``).
*Complementary* suppression hides enough further cells that no suppressed cell can be
recomputed from what is released.

How: an analysis states the additive relations of its cells as ``constraints`` (``total ==
sum(parts)``; the total may be a cell that is not released at all). `suppress` then

1. applies the contract's rule to a fixed point: a constraint in which exactly one member is
   unknown (suppressed, or not released) and that member is suppressed gives it away, so the
   smallest non-zero released part (else the total) of that constraint is suppressed too;
2. checks the result exactly: a suppressed cell is recomputable iff its unit vector lies in the
   row space of the constraints restricted to the unknown cells (linear algebra over all the
   constraints at once, which also catches cells given away by combining several relations,
   e.g. a bridge between two suppressed cycles of a two-way table); any such cell gets one
   more complementary suppression, and the loop repeats.

Known limit: protection is against exact recomputation. Bounds (a suppressed cell lies in
``1..threshold-1``, and sums of non-negative cells bound each other) are not hidden: that is
the accepted residual risk of threshold rules in OHDSI and DARWIN EU tools.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Final, TypeVar

import numpy as np

__all__ = [
    "DEFAULT_MIN_CELL_COUNT",
    "InvalidThresholdError",
    "check_threshold",
    "primary_suppressions",
    "recomputable",
    "released",
    "suppress",
]

K = TypeVar("K", bound=Hashable)

DEFAULT_MIN_CELL_COUNT: Final = 5
"""Minimum cell count of the issue ("default 5, raised but never lowered by the node's policy")."""

_RANK_TOLERANCE: Final = 1e-9


class InvalidThresholdError(ValueError):
    """A threshold below 1, or below the node's policy minimum."""


def check_threshold(threshold: int, policy_min: int = DEFAULT_MIN_CELL_COUNT) -> int:
    """The threshold to apply: ``threshold`` if it is at least ``policy_min``.

    A study may ask for more than the policy, never for less; a lower value here means the
    caller mixed up the study's and the policy's figures, so it is an error, not a silent max.
    """
    if policy_min < 1:
        raise InvalidThresholdError(f"policy minimum cell count must be at least 1 ({policy_min})")
    if threshold < policy_min:
        raise InvalidThresholdError(
            f"minimum cell count {threshold} is below the node's policy minimum {policy_min}"
        )
    return threshold


def primary_suppressions(values: Mapping[K, int], threshold: int) -> set[K]:
    """Cells with ``0 < value < threshold``."""
    if threshold < 1:
        raise InvalidThresholdError(f"minimum cell count must be at least 1 ({threshold})")
    for value in values.values():
        if value < 0:
            raise ValueError("cell counts must not be negative")
    return {key for key, value in values.items() if 0 < value < threshold}


def suppress(
    values: Mapping[K, int],
    threshold: int,
    constraints: Sequence[tuple[K, Sequence[K]]] = (),
) -> set[K]:
    """The keys of ``values`` to release as suppressed (null), primary and complementary.

    ``values``: every cell the analysis would release, with its true count (zeros included).
    ``constraints``: ``(total, parts)`` additive relations between cells; a key in a
    constraint that is absent from ``values`` is a cell that is not released (unknown to the
    reader) but still takes part in the arithmetic. Deterministic: ties are broken by the
    order of the parts in the constraint, then by the order of ``values``.
    """
    suppressed = primary_suppressions(values, threshold)
    if not constraints or not suppressed:
        return suppressed
    relations = [(total, list(parts)) for total, parts in constraints]
    order = {key: index for index, key in enumerate(values)}
    while True:
        _peel(values, relations, suppressed)
        exposed = recomputable(values, relations, suppressed)
        if not exposed:
            return suppressed
        # One complement per exposed cell in a round (cheaper than one linear-algebra check
        # per added cell; it may hide a cell more than strictly needed, never fewer).
        for key in sorted(exposed, key=lambda k: order[k]):
            suppressed.add(_complement_for(key, values, relations, suppressed, order))


def recomputable(
    values: Mapping[K, int],
    constraints: Sequence[tuple[K, Sequence[K]]],
    suppressed: set[K],
) -> set[K]:
    """Suppressed keys whose value follows from the released cells and the constraints.

    Unknowns are the suppressed keys and the keys that take part in a constraint but are not
    in ``values``. A suppressed cell ``x_i`` is determined iff ``e_i`` is in the row space of
    the constraint matrix restricted to the unknown columns: iff the orthogonal projection of
    ``e_i`` on that row space (from the SVD's right singular vectors) has length 1. Each set
    of unknowns linked by constraints is solved apart, which keeps the matrices small.
    """
    rows: list[list[K]] = []
    signs: list[list[float]] = []
    for total, parts in constraints:
        members = [(k, s) for k, s in ((total, 1.0), *((p, -1.0) for p in parts))]
        unknown = [(k, s) for k, s in members if k in suppressed or k not in values]
        if unknown:
            rows.append([k for k, _ in unknown])
            signs.append([s for _, s in unknown])
    parent: dict[K, K] = {}

    def find(key: K) -> K:
        root = key
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while key != root:
            parent[key], key = root, parent[key]
        return root

    for keys in rows:
        for key in keys[1:]:
            parent[find(key)] = find(keys[0])
    components: dict[K, list[int]] = {}
    for index, keys in enumerate(rows):
        components.setdefault(find(keys[0]), []).append(index)
    exposed: set[K] = set()
    for indices in components.values():
        columns: dict[K, int] = {}
        for index in indices:
            for key in rows[index]:
                columns.setdefault(key, len(columns))
        if not any(key in suppressed for key in columns):
            continue
        matrix = np.zeros((len(indices), len(columns)))
        for r, index in enumerate(indices):
            for key, sign in zip(rows[index], signs[index], strict=True):
                matrix[r, columns[key]] += sign
        _, singular, vt = np.linalg.svd(matrix, full_matrices=False)
        rank = int(np.sum(singular > _RANK_TOLERANCE * max(matrix.shape) * singular[0]))
        projection = np.sum(vt[:rank] ** 2, axis=0)
        exposed.update(
            key
            for key, column in columns.items()
            if key in suppressed and projection[column] > 1 - 1e-7
        )
    return exposed


def released(values: Mapping[K, int], suppressed: set[K]) -> dict[K, int | None]:
    """What leaves the node: the value, or ``None`` for a suppressed cell."""
    return {key: None if key in suppressed else value for key, value in values.items()}


# --------------------------------------------------------------------------- internals


def _peel(
    values: Mapping[K, int], relations: Sequence[tuple[K, list[K]]], suppressed: set[K]
) -> None:
    """The contract's rule, to a fixed point: a relation with exactly one unknown member that
    is suppressed gets the smallest non-zero released part (else its total) suppressed too."""
    changed = True
    while changed:
        changed = False
        for total, parts in relations:
            members = [total, *parts]
            unknown = [k for k in members if k in suppressed or k not in values]
            if len(unknown) != 1 or unknown[0] not in suppressed:
                continue
            candidate = _smallest_released(values, parts, suppressed)
            if candidate is None:
                candidate = _smallest_released(values, [total], suppressed)
            if candidate is not None:
                suppressed.add(candidate)
                changed = True


def _smallest_released(values: Mapping[K, int], keys: Sequence[K], suppressed: set[K]) -> K | None:
    best: K | None = None
    for key in keys:
        value = values.get(key)
        if value is None or value == 0 or key in suppressed:
            continue
        if best is None or value < values[best]:
            best = key
    return best


def _complement_for(
    exposed: K,
    values: Mapping[K, int],
    relations: Sequence[tuple[K, list[K]]],
    suppressed: set[K],
    order: Mapping[K, int],
) -> K:
    """One more cell to suppress for a recomputable ``exposed`` cell: the smallest non-zero
    released member of a relation that holds it, else of any relation linked to it.

    Each call suppresses a new cell, so `suppress` ends; at worst every non-zero cell of the
    linked relations is suppressed, and then nothing is recomputable (the released cells are
    zeros, which the all-zero solution also satisfies).
    """
    linked: set[K] = {exposed}
    frontier: set[K] = {exposed}
    while frontier:
        holding = [(t, p) for t, p in relations if frontier & {t, *p}]
        candidates = [k for t, p in holding for k in (*p, t)]
        best = _smallest_released(values, candidates, suppressed)
        if best is not None:
            return best
        reached = {k for t, p in holding for k in (t, *p)}
        frontier = reached - linked
        linked |= reached
    leftovers = [k for k in values if k not in suppressed and values[k] != 0]
    if not leftovers:  # pragma: no cover - the released cells are then all zero
        raise AssertionError("a recomputable cell with no released non-zero cell")
    return min(leftovers, key=lambda k: (values[k], order[k]))
