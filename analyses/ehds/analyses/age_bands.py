"""Age bands as every analysis takes them: edges ``[0, 18, 45, 65]`` mean the bands 0-17,
18-44, 45-64 and 65+.

One definition, because a researcher comparing the age bands of a count, an incidence and a
characterization must be reading the same bands, validated by the same rules.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Annotated, Final

from pydantic import AfterValidator, Field

MAX_AGE: Final = 150
MAX_EDGES: Final = 32


def check_age_edges(edges: list[int]) -> list[int]:
    """Validator of an ``age_band_edges`` parameter: 1 to 32 edges, starting at 0, strictly
    increasing, at most 150."""
    if not edges or len(edges) > MAX_EDGES:
        raise ValueError(f"must hold 1 to {MAX_EDGES} edges")
    if edges[0] != 0:
        raise ValueError("must start at 0")
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError("must be strictly increasing")
    if edges[-1] > MAX_AGE:
        raise ValueError(f"edges must be at most {MAX_AGE}")
    return edges


AgeBandEdges = Annotated[
    list[int], Field(min_length=1, max_length=MAX_EDGES), AfterValidator(check_age_edges)
]
"""Age bands ``[edge_i, edge_{i+1})`` and a last open band ``edge_k+``; the first edge is 0."""


def default_edges() -> list[int]:
    return [0, 18, 45, 65]


def band_labels(edges: Sequence[int]) -> list[str]:
    """``["0-17", "18-44", "45-64", "65+"]`` for edges ``[0, 18, 45, 65]``."""
    labels = [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)]
    labels.append(f"{edges[-1]}+")
    return labels
