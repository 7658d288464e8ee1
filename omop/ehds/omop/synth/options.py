"""What to generate: validated once, here, with errors naming the option.

Identifiers: OMOP ids are 32-bit INTEGERs (at most 2,147,483,647). Each table's ids run
1, 2, 3, ... plus ``id_offset`` (default 0). To give several country nodes *disjoint*
partitions whose union is a valid pooled CDM, give each node its own offset, far enough
apart for the largest table (measurement holds about 25 rows per person), e.g.
``--id-offset 0``, ``--id-offset 500000000`` and ``--id-offset 1000000000`` for three nodes
of up to ~15 million persons each. The generator refuses an offset that would overflow.

Determinism: the output is a pure function of (persons, seed, profile, chunk_size,
start_date, end_date, id_offset).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ehds.core.errors import InputError
from ehds.omop.synth.profiles import PROFILES

INT32_MAX = 2_147_483_647
DEFAULT_CHUNK_SIZE = 100_000


class SynthConfigError(InputError):
    """An option of ``ehds omop synth`` is out of range."""


@dataclass(frozen=True)
class SynthOptions:
    """Options of one generation run.

    ``start_date``/``end_date`` bound every date in the data (the data window); ages in the
    profile are ages on 31 December of ``end_date``'s year. ``chunk_size`` persons are
    generated and written at a time, which bounds memory.
    """

    persons: int
    seed: int = 0
    profile: str = "fr"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    start_date: dt.date = dt.date(2014, 1, 1)
    end_date: dt.date = dt.date(2023, 12, 31)
    id_offset: int = 0
    memory_limit: str | None = "2GB"

    def __post_init__(self) -> None:
        if self.persons <= 0:
            raise SynthConfigError(f"--persons must be a positive number (got {self.persons})")
        if self.seed < 0:
            raise SynthConfigError(f"--seed must be zero or positive (got {self.seed})")
        if self.profile not in PROFILES:
            known = ", ".join(sorted(PROFILES))
            raise SynthConfigError(f"--profile {self.profile!r} is unknown; choose one of {known}")
        if self.chunk_size <= 0:
            raise SynthConfigError(f"chunk_size must be positive (got {self.chunk_size})")
        if self.start_date >= self.end_date:
            raise SynthConfigError(
                f"start_date ({self.start_date}) must come before end_date ({self.end_date})"
            )
        if self.id_offset < 0:
            raise SynthConfigError(f"--id-offset must be zero or positive (got {self.id_offset})")
        if self.id_offset + self.persons > INT32_MAX:
            raise SynthConfigError(
                f"--id-offset {self.id_offset} + --persons {self.persons} exceeds the largest "
                f"OMOP id ({INT32_MAX})"
            )
