"""Errors of cohort definitions: both are input errors (fix the definition and retry).

InputError (ehds.core.errors)
└── CohortDefinitionError       the definition is malformed (message names the path)
    └── UnsupportedCohortError  well-formed ATLAS JSON using a construct this node does
                                not execute (message names the construct and its path)
"""

from __future__ import annotations

from ehds.core.errors import InputError


class CohortDefinitionError(InputError):
    """A cohort definition (YAML or ATLAS JSON) is invalid; the message names the path."""


class UnsupportedCohortError(CohortDefinitionError):
    """An ATLAS construct outside the supported subset (see docs/cohorts.md)."""
