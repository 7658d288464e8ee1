"""Errors of the permits library, and the reason codes of a refused permit.

    EhdsError
    ├── InputError
    │   ├── PermitFormatError     not a valid ehds-data-permit/1 document (names the field)
    │   ├── PermitRefusedError    a permit that must not be honoured; ``.reason`` says which rule
    │   └── HdabKeyError          a bad HDAB key name or key file
    └── StateError
        └── HdabKeyExistsError    a key file exists already (never overwritten)

A refusal travels: the node sends it to the coordinator, the coordinator to the researcher, both
audit it. So its text is a fixed code and a fixed sentence per rule, never a value taken from
the document (an id, a name, a date): a forged document must not be able to choose what ends up
in someone else's log. The precise problem (which field is malformed) stays in ``detail`` for
the local ``ehds permit verify``, which only shows it to the person holding the file.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from ehds.core.errors import InputError, StateError


class PermitFormatError(InputError):
    """The document is not a valid permit document; the message names the field."""


class HdabKeyError(InputError):
    """An HDAB key name or key file that cannot be used (wrong name, not a P-256 key...)."""


class HdabKeyExistsError(StateError):
    """A key file to be created exists already; keys are never overwritten."""


class PermitRefusal(StrEnum):
    """Why a permit is refused; the value is the code sent over the wire and audited."""

    MISSING = "permit.missing"
    MALFORMED = "permit.malformed"
    UNTRUSTED_ISSUER = "permit.untrusted_issuer"
    BAD_SIGNATURE = "permit.bad_signature"
    NOT_YET_VALID = "permit.not_yet_valid"
    EXPIRED = "permit.expired"
    NODE_NOT_COVERED = "permit.node_not_covered"
    ANALYSIS_NOT_COVERED = "permit.analysis_not_covered"
    NOT_HOLDER = "permit.not_holder"

    @property
    def message(self) -> str:
        """A fixed sentence for this code (never a value from the document)."""
        return _MESSAGES[self]


_MESSAGES: Final[dict[PermitRefusal, str]] = {
    PermitRefusal.MISSING: "no data permit was given",
    PermitRefusal.MALFORMED: "the data permit is not a valid ehds-data-permit/1 document",
    PermitRefusal.UNTRUSTED_ISSUER: (
        "the data permit is not signed by a trusted health data access body key"
    ),
    PermitRefusal.BAD_SIGNATURE: "the data permit's signature does not verify",
    PermitRefusal.NOT_YET_VALID: "the data permit is not valid yet",
    PermitRefusal.EXPIRED: "the data permit has expired",
    PermitRefusal.NODE_NOT_COVERED: "the data permit does not cover this node",
    PermitRefusal.ANALYSIS_NOT_COVERED: "the data permit does not cover this analysis",
    PermitRefusal.NOT_HOLDER: "the requester is not a holder of the data permit",
}


class PermitRefusedError(InputError):
    """A permit that must not be honoured. ``str()`` is ``"<code>: <fixed sentence>"``.

    ``detail`` is for the local user only (e.g. which field is malformed); it is not part of
    the message, so code that forwards ``str(error)`` never forwards it.
    """

    def __init__(self, reason: PermitRefusal, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {reason.message}")
