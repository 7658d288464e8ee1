"""Disclosure guards of a `glm` release, checked whenever the design table is built and in
every round (their counts ride in the round's single aggregate query, see `sums`).

Why these rules: a score and an information matrix are sums over persons, so a small group
described by the model's terms can be read back from them. ``X'WX`` of two binary covariates
holds the count of persons with both (a 2x2 table), ``X'y`` of a binary covariate the count of
outcomes among its ones. The node refuses when any such cell is small:

* ``glm.too_many_parameters``: more than one parameter per 1/0.33 ≈ 3 persons (a model that
  nearly interpolates its rows releases them).
* ``glm.outcome_cell``: binomial, persons with y = 1 or with y = 0 below the threshold;
  Poisson, persons with at least one event or with none below it; Gaussian, persons with a
  value below it.
* ``glm.covariate_cell``: a binary covariate (its values are only 0 and 1 at this node) with
  either category below the threshold.
* ``glm.cross_cell``: any of the four cells of two binary covariates, or of a binary covariate
  and the outcome (binomial; Poisson: "any event"), in 1..threshold-1.

Messages name the rule and the threshold, never a count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from ehds.analyses.base import DisclosureRefusedError

from .parameters import GlmParameters
from .sums import POSITIVE, N

MAX_PARAMETER_SHARE: Final = 0.33


def _small(count: int, threshold: int) -> bool:
    return 0 < count < threshold


def check_guards(row: Mapping[str, Any], params: GlmParameters, threshold: int) -> int:
    """Raise `DisclosureRefusedError` on the first rule broken; the node's n otherwise."""
    n = int(row[N] or 0)
    p = params.parameter_count
    if p > MAX_PARAMETER_SHARE * n:
        raise DisclosureRefusedError(
            "glm.too_many_parameters",
            f"glm.too_many_parameters: a model of {p} terms needs at least "
            f"{math.floor(p / MAX_PARAMETER_SHARE) + 1} persons at a node",
        )
    positive = int(row[POSITIVE] or 0)
    if params.family == "gaussian":
        outcome_small = n < threshold
    else:
        outcome_small = positive < threshold or n - positive < threshold
    if outcome_small:
        what = {
            "binomial": "persons with and without the outcome",
            "poisson": "persons with and without an event",
            "gaussian": "persons with an outcome value",
        }[params.family]
        raise DisclosureRefusedError(
            "glm.outcome_cell",
            f"glm.outcome_cell: at least {threshold} {what} are required at a node",
        )
    binary: dict[int, int] = {}
    for j, covariate in enumerate(params.covariates):
        if int(row[f"g_nonbinary_{j}"] or 0) == 0:
            ones = int(row[f"g_ones_{j}"] or 0)
            if ones < threshold or n - ones < threshold:
                raise DisclosureRefusedError(
                    "glm.covariate_cell",
                    f"glm.covariate_cell: binary covariate {covariate.name!r} needs at least "
                    f"{threshold} persons in each category",
                )
            binary[j] = ones
    names = params.term_names[1:]
    for j, ones_j in binary.items():
        crosses: list[tuple[str, int, int]] = []
        if params.family != "gaussian":
            crosses.append(("the outcome", positive, int(row[f"g_outcome_{j}"] or 0)))
        for k, ones_k in binary.items():
            if k > j:
                crosses.append((repr(names[k]), ones_k, int(row[f"g_pair_{j}_{k}"] or 0)))
        for other, ones_other, both in crosses:
            cells = (both, ones_j - both, ones_other - both, n - ones_j - ones_other + both)
            if any(_small(cell, threshold) for cell in cells):
                raise DisclosureRefusedError(
                    "glm.cross_cell",
                    f"glm.cross_cell: every cell of binary covariate {names[j]!r} by {other} "
                    f"must be 0 or at least {threshold}",
                )
    return n
