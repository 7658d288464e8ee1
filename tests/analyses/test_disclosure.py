"""`ehds.analyses.disclosure.suppress`: primary and complementary cell suppression.

The property tests draw many small random tables with the one-level hierarchies the analyses
release (overall, each stratification, their cross) and check, with an exact rational
elimination written here independently of the module's floating-point one, that no
suppressed cell can be recomputed from what is released.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from fractions import Fraction

import pytest

from ehds.analyses.disclosure import (
    InvalidThresholdError,
    check_threshold,
    recomputable,
    released,
    suppress,
)

Key = tuple[str, ...]
Constraints = list[tuple[Key, list[Key]]]


# --------------------------------------------------------------------------- examples


def test_primary_suppression_hides_small_cells_and_releases_zero() -> None:
    values = {"a": 0, "b": 1, "c": 4, "d": 5, "e": 100}
    assert suppress(values, 5) == {"b", "c"}
    assert released(values, {"b", "c"}) == {"a": 0, "b": None, "c": None, "d": 5, "e": 100}


def test_threshold_one_suppresses_nothing_and_below_one_is_refused() -> None:
    assert suppress({"a": 1, "b": 0}, 1) == set()
    with pytest.raises(InvalidThresholdError):
        suppress({"a": 1}, 0)


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        suppress({"a": -1}, 5)


def test_one_suppressed_part_takes_the_smallest_nonzero_sibling_along() -> None:
    values = {"total": 120, "a": 3, "b": 0, "c": 17, "d": 100}
    assert suppress(values, 5, [("total", ["a", "b", "c", "d"])]) == {"a", "c"}


def test_a_lone_part_takes_the_total_along() -> None:
    # total = a + b, b is zero: only the total can protect a.
    values = {"total": 3, "a": 3, "b": 0}
    assert suppress(values, 5, [("total", ["a", "b"])]) == {"a", "total"}


def test_a_total_that_is_not_released_protects_a_single_part() -> None:
    values = {"a": 3, "b": 10, "c": 20}
    assert suppress(values, 5, [("total", ["a", "b", "c"])]) == {"a"}


def test_an_unreleased_total_that_another_relation_gives_away_does_not_protect() -> None:
    # "sub" is not released, but overall = sub + x gives it, and sub = a + b then gives a.
    values = {"overall": 50, "x": 20, "a": 3, "b": 27}
    constraints: list[tuple[str, list[str]]] = [("overall", ["sub", "x"]), ("sub", ["a", "b"])]
    hidden = suppress(values, 5, constraints)
    assert "a" in hidden
    assert len(hidden) >= 2
    assert not recomputable(values, constraints, hidden)


def test_two_by_two_table_with_margins_loses_its_four_cells() -> None:
    values, constraints = _table({"sex": ["F", "M"], "age": ["young", "old"]}, overall=True)
    values.update({("sex*age", "F", "young"): 2, ("sex*age", "F", "old"): 10})
    values.update({("sex*age", "M", "young"): 8, ("sex*age", "M", "old"): 9})
    _fill_margins(values, {"sex": ["F", "M"], "age": ["young", "old"]})
    hidden = suppress(values, 5, constraints)
    cells = {k for k in values if k[0] == "sex*age"}
    assert cells <= hidden
    _assert_safe(values, constraints, hidden)


def test_a_bridge_between_two_suppressed_cycles_is_caught() -> None:
    # Rows r1..r4, columns c1..c4 with all margins released. Cells (r1,c1),(r1,c2),(r2,c1),
    # (r2,c2) and (r3,c3),(r3,c4),(r4,c3),(r4,c4) are two suppressed cycles; (r1,c3) joins
    # them. Every row and column then holds at least two suppressed cells (the contract's
    # rule sees nothing), yet (r1,c3) is a bridge and follows from the margins.
    levels = {"row": ["r1", "r2", "r3", "r4"], "col": ["c1", "c2", "c3", "c4"]}
    values, constraints = _table(levels, overall=True, cross_name="row*col")
    for r, c in itertools.product(levels["row"], levels["col"]):
        values[("row*col", r, c)] = 50
    hidden_cells = [
        ("r1", "c1"), ("r1", "c2"), ("r2", "c1"), ("r2", "c2"),
        ("r3", "c3"), ("r3", "c4"), ("r4", "c3"), ("r4", "c4"), ("r1", "c3"),
    ]  # fmt: skip
    for r, c in hidden_cells:
        values[("row*col", r, c)] = 3
    _fill_margins(values, levels, cross_name="row*col")
    pattern: set[Key] = {("row*col", r, c) for r, c in hidden_cells}
    assert ("row*col", "r1", "c3") in recomputable(values, constraints, pattern)
    hidden = suppress(values, 5, constraints)
    assert pattern <= hidden
    _assert_safe(values, constraints, hidden)


def test_the_result_is_deterministic() -> None:
    rng = random.Random(7)
    levels = {"sex": ["F", "M", "U"], "age": ["0-17", "18-44", "45-64", "65+"]}
    values, constraints = _random_table(rng, levels)
    first = suppress(values, 5, constraints)
    assert all(suppress(dict(values), 5, list(constraints)) == first for _ in range(3))


def test_check_threshold_allows_raising_never_lowering() -> None:
    assert check_threshold(10, 5) == 10
    assert check_threshold(5) == 5
    with pytest.raises(InvalidThresholdError, match="below the node's policy minimum 5"):
        check_threshold(3, 5)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("seed", range(150))
def test_random_two_way_tables_leave_nothing_recomputable(seed: int) -> None:
    rng = random.Random(seed)
    levels = {
        "sex": ["F", "M", "U"][: rng.randint(2, 3)],
        "age": ["a0", "a1", "a2", "a3"][: rng.randint(2, 4)],
    }
    values, constraints = _random_table(rng, levels, overall=rng.random() < 0.8)
    threshold = rng.choice([3, 5, 10])
    hidden = suppress(values, threshold, constraints)
    _assert_primary(values, threshold, hidden)
    _assert_safe(values, constraints, hidden)


@pytest.mark.parametrize("seed", range(60))
def test_random_three_way_tables_leave_nothing_recomputable(seed: int) -> None:
    rng = random.Random(1000 + seed)
    levels = {
        "sex": ["F", "M"],
        "age": ["a0", "a1", "a2"][: rng.randint(2, 3)],
        "year": ["2019", "2020", "2021"][: rng.randint(2, 3)],
    }
    values, constraints = _random_three_way(rng, levels)
    hidden = suppress(values, 5, constraints)
    _assert_primary(values, 5, hidden)
    _assert_safe(values, constraints, hidden)


# --------------------------------------------------------------------------- helpers


def _assert_primary(values: Mapping[Key, int], threshold: int, hidden: set[Key]) -> None:
    for key, value in values.items():
        if 0 < value < threshold:
            assert key in hidden
        if value == 0:
            assert key not in hidden, "a zero is released, never suppressed"
    assert hidden <= set(values)


def _assert_safe(values: Mapping[Key, int], constraints: Constraints, hidden: set[Key]) -> None:
    # The contract's rule: no relation has exactly one unknown member that is suppressed.
    for total, parts in constraints:
        unknown = [k for k in (total, *parts) if k in hidden or k not in values]
        assert not (len(unknown) == 1 and unknown[0] in hidden), (total, parts)
    # The exact check, over all relations together.
    determined = _determined_exactly(values, constraints, hidden)
    assert not (determined & hidden), sorted(determined & hidden)


def _determined_exactly(
    values: Mapping[Key, int], constraints: Constraints, hidden: set[Key]
) -> set[Key]:
    """Unknowns fixed by the constraints: reduced row echelon form over the rationals; x_i is
    determined iff some reduced row is the unit vector e_i."""
    unknown = sorted(
        {
            k
            for total, parts in constraints
            for k in (total, *parts)
            if k in hidden or k not in values
        }
    )
    index = {k: i for i, k in enumerate(unknown)}
    matrix: list[list[Fraction]] = []
    for total, parts in constraints:
        row = [Fraction(0)] * len(unknown)
        for key, sign in ((total, 1), *((p, -1) for p in parts)):
            if key in index:
                row[index[key]] += sign
        if any(row):
            matrix.append(row)
    pivot_row = 0
    for col in range(len(unknown)):
        pivot = next((r for r in range(pivot_row, len(matrix)) if matrix[r][col] != 0), None)
        if pivot is None:
            continue
        matrix[pivot_row], matrix[pivot] = matrix[pivot], matrix[pivot_row]
        lead = matrix[pivot_row][col]
        matrix[pivot_row] = [v / lead for v in matrix[pivot_row]]
        for r in range(len(matrix)):
            if r != pivot_row and matrix[r][col] != 0:
                factor = matrix[r][col]
                matrix[r] = [
                    a - factor * b for a, b in zip(matrix[r], matrix[pivot_row], strict=True)
                ]
        pivot_row += 1
    determined = set()
    for row in matrix[:pivot_row]:
        nonzero = [i for i, v in enumerate(row) if v != 0]
        if len(nonzero) == 1:
            determined.add(unknown[nonzero[0]])
    return determined


def _table(
    levels: Mapping[str, Sequence[str]], *, overall: bool, cross_name: str | None = None
) -> tuple[dict[Key, int], Constraints]:
    """Constraints of overall, two stratifications and their cross (values left empty)."""
    (a, a_levels), (b, b_levels) = levels.items()
    cross = cross_name or f"{a}*{b}"
    constraints: Constraints = [
        (("overall",), [(a, x) for x in a_levels]),
        (("overall",), [(b, y) for y in b_levels]),
    ]
    constraints += [((a, x), [(cross, x, y) for y in b_levels]) for x in a_levels]
    constraints += [((b, y), [(cross, x, y) for x in a_levels]) for y in b_levels]
    values: dict[Key, int] = {("overall",): 0} if overall else {}
    return values, constraints


def _fill_margins(
    values: dict[Key, int], levels: Mapping[str, Sequence[str]], cross_name: str | None = None
) -> None:
    (a, a_levels), (b, b_levels) = levels.items()
    cross = cross_name or f"{a}*{b}"
    for x in a_levels:
        values[(a, x)] = sum(values[(cross, x, y)] for y in b_levels)
    for y in b_levels:
        values[(b, y)] = sum(values[(cross, x, y)] for x in a_levels)
    if ("overall",) in values:
        values[("overall",)] = sum(values[(a, x)] for x in a_levels)


def _count(rng: random.Random) -> int:
    """Many small cells and zeros, some large: suppression has work to do."""
    return rng.choice([0, 0, 1, 2, 3, 4, rng.randint(5, 12), rng.randint(10, 300)])


def _random_table(
    rng: random.Random, levels: Mapping[str, Sequence[str]], overall: bool = True
) -> tuple[dict[Key, int], Constraints]:
    values, constraints = _table(levels, overall=overall)
    (a, a_levels), (b, b_levels) = levels.items()
    for x, y in itertools.product(a_levels, b_levels):
        values[(f"{a}*{b}", x, y)] = _count(rng)
    _fill_margins(values, levels)
    return values, constraints


def _random_three_way(
    rng: random.Random, levels: Mapping[str, Sequence[str]]
) -> tuple[dict[Key, int], Constraints]:
    """Overall, each stratification and the full cross (no two-way margins released)."""
    names = list(levels)
    cells = list(itertools.product(*(levels[n] for n in names)))
    values: dict[Key, int] = {("cross", *cell): _count(rng) for cell in cells}
    constraints: Constraints = []
    for position, name in enumerate(names):
        for level in levels[name]:
            parts: list[Key] = [("cross", *c) for c in cells if c[position] == level]
            values[(name, level)] = sum(values[p] for p in parts)
            constraints.append(((name, level), parts))
        constraints.append((("overall",), [(name, level) for level in levels[name]]))
    values[("overall",)] = sum(values[("cross", *c)] for c in cells)
    return values, constraints
