"""The federation protocol as typed, immutable dataclasses.

Why a second set of types beside the generated protobuf classes: protobuf messages are mutable,
have no `None` (an unset field reads as its zero value), and their generated types leak into
every module that touches them. The coordinator and node logic work on these dataclasses only;
`ehds.federation.serde` is the one translation layer, and only the gRPC adapters
(`ehds.coordinator.service`, `ehds.node.link`) touch protobuf.

Each class mirrors the message of the same name in `ehds/federation/v1/*.proto`, where the
meaning of every field is documented. Enum values equal the protobuf values; an unknown value
from a newer peer decodes as `UNSPECIFIED` (see the evolution rules in `common.proto`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum


class ErrorCode(IntEnum):
    UNSPECIFIED = 0
    POLICY_REFUSED = 1
    ANALYSIS_UNKNOWN = 2
    ANALYSIS_VERSION_UNSUPPORTED = 3
    INVALID_PARAMETERS = 4
    DISCLOSURE_REFUSED = 5
    DEADLINE_EXCEEDED = 6
    CANCELLED = 7
    INTERNAL = 8
    CDM_UNAVAILABLE = 9
    PERMIT_REFUSED = 10
    ASSIGNMENT_REJECTED = 11
    RELEASE_REJECTED = 12

    @property
    def is_refusal(self) -> bool:
        """A decision by the node (REFUSED), as opposed to a fault (FAILED)."""
        return self in _REFUSALS


_REFUSALS = frozenset(
    {
        ErrorCode.POLICY_REFUSED,
        ErrorCode.ANALYSIS_UNKNOWN,
        ErrorCode.ANALYSIS_VERSION_UNSUPPORTED,
        ErrorCode.DISCLOSURE_REFUSED,
        ErrorCode.PERMIT_REFUSED,
        ErrorCode.ASSIGNMENT_REJECTED,
        ErrorCode.RELEASE_REJECTED,
    }
)


class TaskStage(IntEnum):
    UNSPECIFIED = 0
    QUEUED = 1
    VALIDATING = 2
    QUERYING = 3
    COMPUTING = 4
    DISCLOSURE_CHECK = 5
    UPLOADING = 6
    AWAITING_RELEASE = 7


class StudyState(IntEnum):
    UNSPECIFIED = 0
    SUBMITTED = 1
    DISPATCHED = 2
    RUNNING = 3
    AGGREGATING = 4
    COMPLETED = 5
    FAILED = 6
    CANCELLED = 7

    @property
    def is_final(self) -> bool:
        return self in (StudyState.COMPLETED, StudyState.FAILED, StudyState.CANCELLED)


class NodeTaskState(IntEnum):
    UNSPECIFIED = 0
    NOT_DISPATCHED = 1
    DISPATCHED = 2
    RECEIVED = 3
    RUNNING = 4
    # Wire name NODE_TASK_STATE_DONE: the node released its result and the coordinator holds it.
    RELEASED = 5
    REFUSED = 6
    FAILED = 7
    TIMED_OUT = 8
    CANCELLED = 9
    # Protocol 1.3: computed, held at the node for its operator's release (not final).
    AWAITING_RELEASE = 10

    @property
    def is_final(self) -> bool:
        return NodeTaskState.RELEASED <= self <= NodeTaskState.CANCELLED


# --------------------------------------------------------------------------- shared


@dataclass(frozen=True)
class ProtocolVersion:
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


@dataclass(frozen=True)
class SoftwareInfo:
    name: str
    version: str


@dataclass(frozen=True, order=True)
class AnalysisRef:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class NodeProfile:
    software: SoftwareInfo
    cdm_version: str
    vocabulary_version: str
    engine: str
    capabilities: tuple[AnalysisRef, ...]
    policy_version: str


@dataclass(frozen=True)
class AuditRef:
    """Protocol 1.3: an entry of a process's audit chain (docs/audit.md), by position and hash."""

    chain: str
    seq: int
    hash: str


@dataclass(frozen=True)
class PayloadChunk:
    index: int
    count: int
    data: bytes
    sha256: bytes = b""
    content_type: str = ""


# --------------------------------------------------------------------------- node -> coordinator


@dataclass(frozen=True)
class Hello:
    protocol_version: ProtocolVersion
    profile: NodeProfile


@dataclass(frozen=True)
class Heartbeat:
    seq: int
    in_flight_task_ids: tuple[str, ...] = ()
    # Protocol 1.3: the node's audit chain head (None before 1.3 or with an empty chain).
    audit_head: AuditRef | None = None


@dataclass(frozen=True)
class TaskAck:
    task_id: str


@dataclass(frozen=True)
class TaskProgress:
    task_id: str
    fraction: float
    stage: TaskStage


@dataclass(frozen=True)
class ResultChunk:
    task_id: str
    chunk: PayloadChunk
    audit_head: AuditRef | None = None


@dataclass(frozen=True)
class TaskOutcome:
    task_id: str
    error_code: ErrorCode
    message: str
    audit_head: AuditRef | None = None


NodeMessage = Hello | Heartbeat | TaskAck | TaskProgress | ResultChunk | TaskOutcome


# --------------------------------------------------------------------------- coordinator -> node


@dataclass(frozen=True)
class Welcome:
    node_name: str
    protocol_version: ProtocolVersion
    heartbeat_interval: timedelta
    coordinator_software: SoftwareInfo
    # Protocol 1.1: the coordinator's clock, so that a node can warn about a skew that would
    # shift the absolute task deadlines. None from a 1.0 coordinator.
    coordinator_time: datetime | None = None
    # Protocol 1.3: PEM of the certificate whose key signs task assignments.
    coordinator_certificate: bytes = b""


@dataclass(frozen=True)
class TaskAssignment:
    task_id: str
    study_id: str
    analysis: AnalysisRef
    parameters: bytes
    deadline: datetime
    min_cell_count: int
    data_permit_id: str = ""
    # Protocol 1.2: the researcher who submitted the study, for the node's differencing guard.
    # Empty from a 1.1 coordinator, and never sent to a 1.1 node.
    requested_by: str = ""
    # Protocol 1.3 (see node_link.proto): the permit document, the per-task nonce, the expiry,
    # the coordinator's audit entry for the task, and the signature over all other fields.
    permit: bytes = b""
    nonce: str = ""
    expires_at: datetime | None = None
    coordinator_audit_ref: AuditRef | None = None
    signature: str = ""


@dataclass(frozen=True)
class CancelTask:
    task_id: str
    reason: str


@dataclass(frozen=True)
class ResultReceipt:
    task_id: str
    sha256: bytes


CoordinatorMessage = Welcome | TaskAssignment | CancelTask | ResultReceipt


# --------------------------------------------------------------------------- study API


@dataclass(frozen=True)
class StudySpec:
    title: str
    analysis: AnalysisRef
    parameters: bytes
    min_nodes: int
    deadline_seconds: int
    target_nodes: tuple[str, ...] = ()
    data_permit_id: str = ""


@dataclass(frozen=True)
class StudyNodeStatus:
    node_name: str
    state: NodeTaskState
    error_code: ErrorCode = ErrorCode.UNSPECIFIED
    reason: str = ""
    vocabulary_version: str = ""
    stage: TaskStage = TaskStage.UNSPECIFIED
    fraction: float = 0.0
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Study:
    id: str
    spec: StudySpec
    state: StudyState
    state_reason: str = ""
    nodes: tuple[StudyNodeStatus, ...] = field(default=())
    submitted_by: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # The current round of an iterative analysis (0 otherwise); ``nodes`` are its tasks.
    round: int = 0


# --------------------------------------------------------------------------- admin API


@dataclass(frozen=True)
class NodeInfo:
    name: str
    connected: bool
    last_seen: datetime | None
    protocol_version: ProtocolVersion | None
    profile: NodeProfile | None
    revoked: bool


# --------------------------------------------------------------------------- permit API


@dataclass(frozen=True)
class PermitInfo:
    """A data permit as registered at the coordinator (permit_api.proto `Permit`)."""

    id: str
    issuer: str
    holders: tuple[str, ...]
    purpose: str
    nodes: tuple[str, ...]
    analyses: tuple[str, ...]
    valid_from: datetime
    valid_until: datetime
    issued_at: datetime
    registered_by: str
    registered_at: datetime
    document: bytes
