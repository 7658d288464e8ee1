"""Errors the coordinator raises on purpose, each mapped to one gRPC status by the services.

    InputError (ehds.core.errors)
    ├── InvalidStudyError        INVALID_ARGUMENT: the message starts with the field path
    │   └── StudyPermitError     INVALID_ARGUMENT, PERMISSION_DENIED when the submitter does
    │                            not hold the permit: "spec.data_permit_id: <permit code>: ..."
    ├── PermitRejectedError      INVALID_ARGUMENT (PERMISSION_DENIED: not a holder): a permit
    │                            that cannot be registered, with its reason code
    ├── PermitConflictError      ALREADY_EXISTS: another document is registered under the id
    ├── PermitNotFoundError      NOT_FOUND (also for a permit the caller does not hold)
    ├── InvalidPageTokenError    INVALID_ARGUMENT
    ├── StudyNotFoundError       NOT_FOUND (also for a study the caller may not see)
    ├── NodeNotFoundError        NOT_FOUND
    ├── ProtocolVersionError     FAILED_PRECONDITION: no common major protocol version
    └── StateUrlError            bad `state.url` in coordinator.yaml (start-up only)
    StateError (ehds.core.errors)
    ├── ResultsNotReadyError     FAILED_PRECONDITION: the study has not COMPLETED
    ├── ResultsPurgedError       FAILED_PRECONDITION: retention deleted the results
    ├── NodeRevokedError         PERMISSION_DENIED: the node was revoked by an operator
    ├── MigrationError           the state database is at a schema this software cannot use
    └── AuditKeyError            the coordinator's certificate or key cannot sign its audit

Messages never carry a result, a parameter value or anything from a node's CDM.
"""

from __future__ import annotations

from ehds.core.errors import InputError, StateError
from ehds.permits import PermitRefusal


class InvalidStudyError(InputError):
    """A study spec does not validate; the message names the field (``spec.min_nodes: ...``)."""


class StudyPermitError(InvalidStudyError):
    """The study's permit does not allow it. ``reason`` is the permit refusal code; the
    message is the field, the code and a fixed sentence (never a value from the permit)."""

    def __init__(self, reason: PermitRefusal, message: str | None = None) -> None:
        super().__init__(f"spec.data_permit_id: {reason.value}: {message or reason.message}")
        self.reason = reason


class PermitRejectedError(InputError):
    """A permit document that cannot be registered; ``reason`` is the refusal code."""

    def __init__(self, reason: PermitRefusal) -> None:
        super().__init__(f"{reason.value}: {reason.message}")
        self.reason = reason


class PermitConflictError(InputError):
    def __init__(self, permit_id: str) -> None:
        super().__init__(
            f"permit {permit_id!r} is already registered with another document; a permit id "
            "names one document for good (ask the HDAB for a new id)"
        )
        self.permit_id = permit_id


class PermitNotFoundError(InputError):
    """No such permit, or one the caller does not hold (the two are not told apart)."""

    def __init__(self, permit_id: str) -> None:
        super().__init__(f"no permit {permit_id!r}")
        self.permit_id = permit_id


class InvalidPageTokenError(InputError):
    """A List page token that this coordinator did not hand out."""


class StudyNotFoundError(InputError):
    """No such study, or one the caller did not submit (the two are not told apart)."""

    def __init__(self, study_id: str) -> None:
        super().__init__(f"no study {study_id!r}")
        self.study_id = study_id


class NodeNotFoundError(InputError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no node {name!r} has ever connected to this coordinator")
        self.name = name


class ProtocolVersionError(InputError):
    """The node speaks another major protocol version."""


class StateUrlError(InputError):
    """`state.url` names a database the coordinator cannot use."""


class ResultsNotReadyError(StateError):
    def __init__(self, study_id: str, state: str) -> None:
        super().__init__(f"study {study_id!r} is {state}: results exist only once it COMPLETED")
        self.study_id = study_id


class ResultsPurgedError(StateError):
    def __init__(self, study_id: str) -> None:
        super().__init__(
            f"study {study_id!r}: its results were deleted by the coordinator's retention policy"
        )
        self.study_id = study_id


class NodeRevokedError(StateError):
    def __init__(self, name: str) -> None:
        super().__init__(f"node {name!r} is revoked by the federation's operators")
        self.name = name


class MigrationError(StateError):
    """The state database cannot be brought to this software's schema."""


class AuditKeyError(StateError):
    """The coordinator cannot sign its audit chain and task assignments (its TLS key or
    certificate cannot be read)."""
