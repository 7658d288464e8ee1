"""The error hierarchy every component raises from.

    EhdsError                  anything this project raises on purpose
    ├── InputError             bad input from a user or a file: fix the input and retry
    │   └── (component errors: CdmLoadError, SynthConfigError, ...)
    └── StateError             the system is not in a state that allows the operation

Messages name what and where (file, line, column, key path) and never carry row-level values
from a CDM: an error message may end up in a log or leave the node.
"""

from __future__ import annotations


class EhdsError(Exception):
    """Base class; the CLI turns these into a one-line message and exit code 2."""

    exit_code = 2


class InputError(EhdsError):
    """The input (file, option, configuration) is wrong; nothing was changed."""


class StateError(EhdsError):
    """The operation is not possible in the current state (missing table, locked file...)."""
