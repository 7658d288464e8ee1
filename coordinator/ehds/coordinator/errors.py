"""Errors the coordinator raises on purpose, each mapped to one gRPC status by the services.

    InputError (ehds.core.errors)
    ├── InvalidStudyError        INVALID_ARGUMENT: the message starts with the field path
    ├── InvalidPageTokenError    INVALID_ARGUMENT
    ├── StudyNotFoundError       NOT_FOUND (also for a study the caller may not see)
    ├── NodeNotFoundError        NOT_FOUND
    ├── ProtocolVersionError     FAILED_PRECONDITION: no common major protocol version
    └── StateUrlError            bad `state.url` in coordinator.yaml (start-up only)
    StateError (ehds.core.errors)
    ├── ResultsNotReadyError     FAILED_PRECONDITION: the study has not COMPLETED
    ├── NodeRevokedError         PERMISSION_DENIED: the node was revoked by an operator
    └── MigrationError           the state database is at a schema this software cannot use

Messages never carry a result, a parameter value or anything from a node's CDM.
"""

from __future__ import annotations

from ehds.core.errors import InputError, StateError


class InvalidStudyError(InputError):
    """A study spec does not validate; the message names the field (``spec.min_nodes: ...``)."""


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


class NodeRevokedError(StateError):
    def __init__(self, name: str) -> None:
        super().__init__(f"node {name!r} is revoked by the federation's operators")
        self.name = name


class MigrationError(StateError):
    """The state database cannot be brought to this software's schema."""
