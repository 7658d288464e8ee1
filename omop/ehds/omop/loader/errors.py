"""Typed errors of a CDM or vocabulary load.

    InputError (ehds.core.errors)
    └── CdmLoadError                 a source cannot be loaded; the target is unchanged
        ├── SourceError              the source itself: missing, unreadable, ambiguous
        ├── UnknownTableError        a data file or table that names no OMOP table
        ├── UnsupportedVersionError  a CDM version other than 5.3 and 5.4
        ├── UnknownColumnError       a column the table does not have
        ├── MissingColumnError       a required (NOT NULL) column absent from the header
        ├── MalformedRowError        a row that is not a row (field count, quoting, encoding)
        ├── WrongTypeError           a value that is not of the column's type
        ├── ValueTooLongError        a text longer than the column allows
        ├── MissingValueError        an empty value in a required column
        └── DuplicateKeyError        a primary key seen twice
    StateError
    └── LoadFailedError              the database refused rows and no cause was found

Every message names the file (or table), the line (or row), the column and the expected
type, and never the offending value: messages end up in logs and may leave the hospital.
"""

from __future__ import annotations

from dataclasses import dataclass

from ehds.core.errors import InputError, StateError


@dataclass(frozen=True)
class Location:
    """Where a problem is: a file and a line (CSV), or a file or table and a row."""

    origin: str
    line: int | None = None
    row: int | None = None

    def __str__(self) -> str:
        return ", ".join([self.origin, *self._position()])

    def relative_to(self, other: Location) -> str:
        """This location, without its origin when ``other`` has the same one."""
        position = self._position()
        return ", ".join(position) if position and other.origin == self.origin else str(self)

    def _position(self) -> list[str]:
        parts = []
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.row is not None:
            parts.append(f"row {self.row}")
        return parts


class CdmLoadError(InputError):
    """A load that failed because of its input. Attributes locate the problem for callers."""

    def __init__(
        self,
        problem: str,
        *,
        location: Location | None = None,
        column: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.location = location
        self.column = column
        self.expected = expected
        where = [str(location)] if location else []
        if column is not None:
            where.append(f"column {column}")
        text = f"{', '.join(where)}: {problem}" if where else problem
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)


class SourceError(CdmLoadError):
    pass


class UnknownTableError(CdmLoadError):
    pass


class UnsupportedVersionError(CdmLoadError):
    pass


class UnknownColumnError(CdmLoadError):
    pass


class MissingColumnError(CdmLoadError):
    pass


class MalformedRowError(CdmLoadError):
    pass


class WrongTypeError(CdmLoadError):
    pass


class ValueTooLongError(CdmLoadError):
    pass


class MissingValueError(CdmLoadError):
    pass


class DuplicateKeyError(CdmLoadError):
    pass


class LoadFailedError(StateError):
    """The database refused the rows of a table, and re-reading the source found no bad
    value: a resource or engine problem, not the input's. Carries the engine's error class
    only, since engine messages may quote row values."""
