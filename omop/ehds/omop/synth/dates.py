"""Dates as day numbers (days since 1970-01-01) in numpy, turned into Arrow ``date32`` at the
edge: arithmetic on millions of dates stays vectorised and exact."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

Days = npt.NDArray[np.int64]

EPOCH = dt.date(1970, 1, 1)
DAYS_PER_YEAR = 365.25


def day_number(date: dt.date) -> int:
    return (date - EPOCH).days


@dataclass(frozen=True)
class Window:
    """The data window: every date in the generated CDM lies in ``[start, end]``.

    Ages are counted on 31 December of ``end``'s year (``index_year``), so that a person's age
    is exactly ``index_year - year_of_birth``.
    """

    start: int
    end: int
    index_year: int

    @classmethod
    def of(cls, start: dt.date, end: dt.date) -> Window:
        return cls(day_number(start), day_number(end), end.year)


def year_starts(years: npt.NDArray[np.int64]) -> Days:
    """Day number of 1 January of each year."""
    starts: Days = (years - 1970).astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64)
    return starts


def year_month_day(
    days: Days,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    as_days = days.astype("datetime64[D]")
    years = as_days.astype("datetime64[Y]")
    months = as_days.astype("datetime64[M]")
    year = years.astype(np.int64) + 1970
    month = (months - years.astype("datetime64[M]")).astype(np.int64) + 1
    day = (as_days - months.astype("datetime64[D]")).astype(np.int64) + 1
    return year, month, day


def date_array(days: Days, null: npt.NDArray[np.bool_] | None = None) -> pa.Array:
    """Day numbers as an Arrow ``date32`` array; ``null`` marks missing dates."""
    return pa.array(days.astype(np.int32), mask=null).cast(pa.date32())
