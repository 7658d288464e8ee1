"""The one place that converts between protobuf messages and `ehds.federation.model`.

Why a single translation layer: protobuf has no `None` (an unset field reads as its zero value),
its generated types are mutable, and a peer speaking a newer minor version may send oneof cases
and enum values this code does not know. Those protocol rules (see `common.proto`) are applied
here once, so that the coordinator and the node handle typed, immutable dataclasses only:

* an unknown oneof case decodes as `None` (the caller ignores the message);
* an unknown enum value decodes as the enum's `UNSPECIFIED` member;
* an unset `Timestamp` decodes as `None`; set ones are aware UTC datetimes;
* a sub-message the model cannot do without (e.g. `Hello.profile`) raises `ProtocolViolation`
  naming the field, so that the receiver can end the stream with INVALID_ARGUMENT.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from ehds.core.errors import InputError
from ehds.federation import model
from ehds.federation.v1 import (
    admin_api_pb2,
    common_pb2,
    node_link_pb2,
    permit_api_pb2,
    study_api_pb2,
)

__all__ = [
    "ProtocolViolation",
    "decode_analysis_ref",
    "decode_chunk",
    "decode_coordinator_message",
    "decode_duration",
    "decode_node_info",
    "decode_node_message",
    "decode_profile",
    "decode_protocol_version",
    "decode_software",
    "decode_study",
    "decode_study_node_status",
    "decode_study_spec",
    "decode_timestamp",
    "encode_analysis_ref",
    "encode_chunk",
    "encode_coordinator_message",
    "encode_duration",
    "encode_node_info",
    "encode_node_message",
    "encode_profile",
    "encode_protocol_version",
    "encode_software",
    "encode_study",
    "encode_study_node_status",
    "encode_study_spec",
    "encode_timestamp",
]


class ProtocolViolation(InputError):  # noqa: N818 (the protocol's own term for it)
    """A peer sent a message that breaks the protocol (e.g. a required sub-message is unset).

    The receiver ends the stream with INVALID_ARGUMENT; the message names the field only, never
    a value, so it is safe to log and to send back.
    """

    def __init__(self, field: str, problem: str = "is not set") -> None:
        super().__init__(f"protocol violation: {field} {problem}")
        self.field = field


_E = TypeVar("_E", bound=IntEnum)


def _enum(kind: type[_E], value: int) -> _E:
    """`kind(value)`, or `kind.UNSPECIFIED` for a value from a newer peer (evolution rule)."""
    try:
        return kind(value)
    except ValueError:
        return kind(0)


def _require(message: Message, name: str, path: str) -> None:
    if not message.HasField(name):
        raise ProtocolViolation(f"{path}.{name}")


# --------------------------------------------------------------------------- well-known types


def encode_timestamp(value: datetime) -> Timestamp:
    """An aware datetime as a Timestamp; a naive one is a bug (its zone would be a guess)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("naive datetime: the federation protocol carries aware UTC datetimes")
    timestamp = Timestamp()
    timestamp.FromDatetime(value.astimezone(UTC))
    return timestamp


def decode_timestamp(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def _optional_timestamp(message: Message, name: str, timestamp: Timestamp) -> datetime | None:
    return decode_timestamp(timestamp) if message.HasField(name) else None


def encode_duration(value: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(value)
    return duration


def decode_duration(duration: Duration) -> timedelta:
    return duration.ToTimedelta()


# --------------------------------------------------------------------------- common.proto


def encode_protocol_version(m: model.ProtocolVersion) -> common_pb2.ProtocolVersion:
    return common_pb2.ProtocolVersion(major=m.major, minor=m.minor)


def decode_protocol_version(pb: common_pb2.ProtocolVersion) -> model.ProtocolVersion:
    return model.ProtocolVersion(major=pb.major, minor=pb.minor)


def encode_software(m: model.SoftwareInfo) -> common_pb2.SoftwareInfo:
    return common_pb2.SoftwareInfo(name=m.name, version=m.version)


def decode_software(pb: common_pb2.SoftwareInfo) -> model.SoftwareInfo:
    return model.SoftwareInfo(name=pb.name, version=pb.version)


def encode_analysis_ref(m: model.AnalysisRef) -> common_pb2.AnalysisRef:
    return common_pb2.AnalysisRef(name=m.name, version=m.version)


def decode_analysis_ref(pb: common_pb2.AnalysisRef) -> model.AnalysisRef:
    return model.AnalysisRef(name=pb.name, version=pb.version)


def encode_profile(m: model.NodeProfile) -> common_pb2.NodeProfile:
    return common_pb2.NodeProfile(
        software=encode_software(m.software),
        cdm_version=m.cdm_version,
        vocabulary_version=m.vocabulary_version,
        engine=m.engine,
        capabilities=[encode_analysis_ref(ref) for ref in m.capabilities],
        policy_version=m.policy_version,
    )


def decode_profile(pb: common_pb2.NodeProfile, path: str = "NodeProfile") -> model.NodeProfile:
    _require(pb, "software", path)
    return model.NodeProfile(
        software=decode_software(pb.software),
        cdm_version=pb.cdm_version,
        vocabulary_version=pb.vocabulary_version,
        engine=pb.engine,
        capabilities=tuple(decode_analysis_ref(ref) for ref in pb.capabilities),
        policy_version=pb.policy_version,
    )


def encode_audit_ref(m: model.AuditRef) -> common_pb2.AuditRef:
    return common_pb2.AuditRef(chain=m.chain, seq=m.seq, hash=m.hash)


def decode_audit_ref(message: Message, name: str) -> model.AuditRef | None:
    """``message.name`` as a model, None when unset (a peer before 1.3, or no entry yet)."""
    if not message.HasField(name):
        return None
    pb: common_pb2.AuditRef = getattr(message, name)
    return model.AuditRef(chain=pb.chain, seq=pb.seq, hash=pb.hash)


def encode_chunk(m: model.PayloadChunk) -> common_pb2.PayloadChunk:
    return common_pb2.PayloadChunk(
        index=m.index,
        count=m.count,
        data=m.data,
        sha256=m.sha256,
        content_type=m.content_type,
    )


def decode_chunk(pb: common_pb2.PayloadChunk) -> model.PayloadChunk:
    return model.PayloadChunk(
        index=pb.index,
        count=pb.count,
        data=pb.data,
        sha256=pb.sha256,
        content_type=pb.content_type,
    )


def _error_code(m: model.ErrorCode) -> common_pb2.ErrorCode.ValueType:
    return common_pb2.ErrorCode.ValueType(int(m))


def _task_stage(m: model.TaskStage) -> common_pb2.TaskStage.ValueType:
    return common_pb2.TaskStage.ValueType(int(m))


# --------------------------------------------------------------------------- node_link.proto


def encode_node_message(m: model.NodeMessage) -> node_link_pb2.NodeMessage:
    match m:
        case model.Hello():
            return node_link_pb2.NodeMessage(
                hello=node_link_pb2.Hello(
                    protocol_version=encode_protocol_version(m.protocol_version),
                    profile=encode_profile(m.profile),
                )
            )
        case model.Heartbeat():
            heartbeat = node_link_pb2.Heartbeat(
                seq=m.seq, in_flight_task_ids=list(m.in_flight_task_ids)
            )
            if m.audit_head is not None:
                heartbeat.audit_head.CopyFrom(encode_audit_ref(m.audit_head))
            return node_link_pb2.NodeMessage(heartbeat=heartbeat)
        case model.TaskAck():
            return node_link_pb2.NodeMessage(task_ack=node_link_pb2.TaskAck(task_id=m.task_id))
        case model.TaskProgress():
            return node_link_pb2.NodeMessage(
                task_progress=node_link_pb2.TaskProgress(
                    task_id=m.task_id, fraction=m.fraction, stage=_task_stage(m.stage)
                )
            )
        case model.ResultChunk():
            result_chunk = node_link_pb2.ResultChunk(task_id=m.task_id, chunk=encode_chunk(m.chunk))
            if m.audit_head is not None:
                result_chunk.audit_head.CopyFrom(encode_audit_ref(m.audit_head))
            return node_link_pb2.NodeMessage(result_chunk=result_chunk)
        case model.TaskOutcome():
            task_outcome = node_link_pb2.TaskOutcome(
                task_id=m.task_id, error_code=_error_code(m.error_code), message=m.message
            )
            if m.audit_head is not None:
                task_outcome.audit_head.CopyFrom(encode_audit_ref(m.audit_head))
            return node_link_pb2.NodeMessage(task_outcome=task_outcome)


def decode_node_message(pb: node_link_pb2.NodeMessage) -> model.NodeMessage | None:
    """The message, or None for a kind this version does not know (the receiver skips it)."""
    match pb.WhichOneof("body"):
        case "hello":
            hello = pb.hello
            _require(hello, "protocol_version", "Hello")
            _require(hello, "profile", "Hello")
            return model.Hello(
                protocol_version=decode_protocol_version(hello.protocol_version),
                profile=decode_profile(hello.profile, "Hello.profile"),
            )
        case "heartbeat":
            return model.Heartbeat(
                seq=pb.heartbeat.seq,
                in_flight_task_ids=tuple(pb.heartbeat.in_flight_task_ids),
                audit_head=decode_audit_ref(pb.heartbeat, "audit_head"),
            )
        case "task_ack":
            return model.TaskAck(task_id=pb.task_ack.task_id)
        case "task_progress":
            progress = pb.task_progress
            return model.TaskProgress(
                task_id=progress.task_id,
                fraction=progress.fraction,
                stage=_enum(model.TaskStage, progress.stage),
            )
        case "result_chunk":
            _require(pb.result_chunk, "chunk", "ResultChunk")
            return model.ResultChunk(
                task_id=pb.result_chunk.task_id,
                chunk=decode_chunk(pb.result_chunk.chunk),
                audit_head=decode_audit_ref(pb.result_chunk, "audit_head"),
            )
        case "task_outcome":
            outcome = pb.task_outcome
            return model.TaskOutcome(
                task_id=outcome.task_id,
                error_code=_enum(model.ErrorCode, outcome.error_code),
                message=outcome.message,
                audit_head=decode_audit_ref(outcome, "audit_head"),
            )
        case _:
            return None


def encode_coordinator_message(m: model.CoordinatorMessage) -> node_link_pb2.CoordinatorMessage:
    match m:
        case model.Welcome():
            welcome = node_link_pb2.Welcome(
                node_name=m.node_name,
                protocol_version=encode_protocol_version(m.protocol_version),
                heartbeat_interval=encode_duration(m.heartbeat_interval),
                coordinator_software=encode_software(m.coordinator_software),
                coordinator_certificate=m.coordinator_certificate,
            )
            if m.coordinator_time is not None:
                welcome.coordinator_time.CopyFrom(encode_timestamp(m.coordinator_time))
            return node_link_pb2.CoordinatorMessage(welcome=welcome)
        case model.TaskAssignment():
            assignment = node_link_pb2.TaskAssignment(
                task_id=m.task_id,
                study_id=m.study_id,
                analysis=encode_analysis_ref(m.analysis),
                parameters=m.parameters,
                deadline=encode_timestamp(m.deadline),
                min_cell_count=m.min_cell_count,
                data_permit_id=m.data_permit_id,
                requested_by=m.requested_by,
                permit=m.permit,
                nonce=m.nonce,
                signature=m.signature,
            )
            if m.expires_at is not None:
                assignment.expires_at.CopyFrom(encode_timestamp(m.expires_at))
            if m.coordinator_audit_ref is not None:
                assignment.coordinator_audit_ref.CopyFrom(encode_audit_ref(m.coordinator_audit_ref))
            return node_link_pb2.CoordinatorMessage(task_assignment=assignment)
        case model.CancelTask():
            return node_link_pb2.CoordinatorMessage(
                cancel_task=node_link_pb2.CancelTask(task_id=m.task_id, reason=m.reason)
            )
        case model.ResultReceipt():
            return node_link_pb2.CoordinatorMessage(
                result_receipt=node_link_pb2.ResultReceipt(task_id=m.task_id, sha256=m.sha256)
            )


def decode_coordinator_message(
    pb: node_link_pb2.CoordinatorMessage,
) -> model.CoordinatorMessage | None:
    """The message, or None for a kind this version does not know (the receiver skips it)."""
    match pb.WhichOneof("body"):
        case "welcome":
            welcome = pb.welcome
            for name in ("protocol_version", "heartbeat_interval", "coordinator_software"):
                _require(welcome, name, "Welcome")
            return model.Welcome(
                node_name=welcome.node_name,
                protocol_version=decode_protocol_version(welcome.protocol_version),
                heartbeat_interval=decode_duration(welcome.heartbeat_interval),
                coordinator_software=decode_software(welcome.coordinator_software),
                coordinator_time=_optional_timestamp(
                    welcome, "coordinator_time", welcome.coordinator_time
                ),
                coordinator_certificate=welcome.coordinator_certificate,
            )
        case "task_assignment":
            task = pb.task_assignment
            _require(task, "analysis", "TaskAssignment")
            _require(task, "deadline", "TaskAssignment")
            return model.TaskAssignment(
                task_id=task.task_id,
                study_id=task.study_id,
                analysis=decode_analysis_ref(task.analysis),
                parameters=task.parameters,
                deadline=decode_timestamp(task.deadline),
                min_cell_count=task.min_cell_count,
                data_permit_id=task.data_permit_id,
                requested_by=task.requested_by,
                permit=task.permit,
                nonce=task.nonce,
                expires_at=_optional_timestamp(task, "expires_at", task.expires_at),
                coordinator_audit_ref=decode_audit_ref(task, "coordinator_audit_ref"),
                signature=task.signature,
            )
        case "cancel_task":
            return model.CancelTask(task_id=pb.cancel_task.task_id, reason=pb.cancel_task.reason)
        case "result_receipt":
            return model.ResultReceipt(
                task_id=pb.result_receipt.task_id, sha256=pb.result_receipt.sha256
            )
        case _:
            return None


# --------------------------------------------------------------------------- study_api.proto


def encode_study_spec(m: model.StudySpec) -> study_api_pb2.StudySpec:
    return study_api_pb2.StudySpec(
        title=m.title,
        analysis=encode_analysis_ref(m.analysis),
        parameters=m.parameters,
        min_nodes=m.min_nodes,
        deadline_seconds=m.deadline_seconds,
        target_nodes=list(m.target_nodes),
        data_permit_id=m.data_permit_id,
    )


def decode_study_spec(pb: study_api_pb2.StudySpec, path: str = "StudySpec") -> model.StudySpec:
    _require(pb, "analysis", path)
    return model.StudySpec(
        title=pb.title,
        analysis=decode_analysis_ref(pb.analysis),
        parameters=pb.parameters,
        min_nodes=pb.min_nodes,
        deadline_seconds=pb.deadline_seconds,
        target_nodes=tuple(pb.target_nodes),
        data_permit_id=pb.data_permit_id,
    )


def encode_study_node_status(m: model.StudyNodeStatus) -> study_api_pb2.StudyNodeStatus:
    pb = study_api_pb2.StudyNodeStatus(
        node_name=m.node_name,
        state=study_api_pb2.NodeTaskState.ValueType(int(m.state)),
        error_code=_error_code(m.error_code),
        reason=m.reason,
        vocabulary_version=m.vocabulary_version,
        stage=_task_stage(m.stage),
        fraction=m.fraction,
    )
    if m.updated_at is not None:
        pb.updated_at.CopyFrom(encode_timestamp(m.updated_at))
    return pb


def decode_study_node_status(pb: study_api_pb2.StudyNodeStatus) -> model.StudyNodeStatus:
    return model.StudyNodeStatus(
        node_name=pb.node_name,
        state=_enum(model.NodeTaskState, pb.state),
        error_code=_enum(model.ErrorCode, pb.error_code),
        reason=pb.reason,
        vocabulary_version=pb.vocabulary_version,
        stage=_enum(model.TaskStage, pb.stage),
        fraction=pb.fraction,
        updated_at=_optional_timestamp(pb, "updated_at", pb.updated_at),
    )


def encode_study(m: model.Study) -> study_api_pb2.Study:
    pb = study_api_pb2.Study(
        id=m.id,
        spec=encode_study_spec(m.spec),
        state=study_api_pb2.StudyState.ValueType(int(m.state)),
        state_reason=m.state_reason,
        nodes=[encode_study_node_status(node) for node in m.nodes],
        submitted_by=m.submitted_by,
        round=m.round,
    )
    if m.created_at is not None:
        pb.created_at.CopyFrom(encode_timestamp(m.created_at))
    if m.updated_at is not None:
        pb.updated_at.CopyFrom(encode_timestamp(m.updated_at))
    return pb


def decode_study(pb: study_api_pb2.Study) -> model.Study:
    _require(pb, "spec", "Study")
    return model.Study(
        id=pb.id,
        spec=decode_study_spec(pb.spec, "Study.spec"),
        state=_enum(model.StudyState, pb.state),
        state_reason=pb.state_reason,
        nodes=tuple(decode_study_node_status(node) for node in pb.nodes),
        submitted_by=pb.submitted_by,
        created_at=_optional_timestamp(pb, "created_at", pb.created_at),
        updated_at=_optional_timestamp(pb, "updated_at", pb.updated_at),
        round=pb.round,
    )


# --------------------------------------------------------------------------- admin_api.proto


def encode_node_info(m: model.NodeInfo) -> admin_api_pb2.NodeInfo:
    pb = admin_api_pb2.NodeInfo(name=m.name, connected=m.connected, revoked=m.revoked)
    if m.last_seen is not None:
        pb.last_seen.CopyFrom(encode_timestamp(m.last_seen))
    if m.protocol_version is not None:
        pb.protocol_version.CopyFrom(encode_protocol_version(m.protocol_version))
    if m.profile is not None:
        pb.profile.CopyFrom(encode_profile(m.profile))
    return pb


def decode_node_info(pb: admin_api_pb2.NodeInfo) -> model.NodeInfo:
    return model.NodeInfo(
        name=pb.name,
        connected=pb.connected,
        last_seen=_optional_timestamp(pb, "last_seen", pb.last_seen),
        protocol_version=(
            decode_protocol_version(pb.protocol_version)
            if pb.HasField("protocol_version")
            else None
        ),
        profile=decode_profile(pb.profile, "NodeInfo.profile") if pb.HasField("profile") else None,
        revoked=pb.revoked,
    )


# --------------------------------------------------------------------------- permit_api.proto


def encode_permit(m: model.PermitInfo) -> permit_api_pb2.Permit:
    return permit_api_pb2.Permit(
        id=m.id,
        issuer=m.issuer,
        holders=list(m.holders),
        purpose=m.purpose,
        nodes=list(m.nodes),
        analyses=list(m.analyses),
        valid_from=encode_timestamp(m.valid_from),
        valid_until=encode_timestamp(m.valid_until),
        issued_at=encode_timestamp(m.issued_at),
        registered_by=m.registered_by,
        registered_at=encode_timestamp(m.registered_at),
        document=m.document,
    )


def decode_permit(pb: permit_api_pb2.Permit) -> model.PermitInfo:
    for name in ("valid_from", "valid_until", "issued_at", "registered_at"):
        _require(pb, name, "Permit")
    return model.PermitInfo(
        id=pb.id,
        issuer=pb.issuer,
        holders=tuple(pb.holders),
        purpose=pb.purpose,
        nodes=tuple(pb.nodes),
        analyses=tuple(pb.analyses),
        valid_from=decode_timestamp(pb.valid_from),
        valid_until=decode_timestamp(pb.valid_until),
        issued_at=decode_timestamp(pb.issued_at),
        registered_by=pb.registered_by,
        registered_at=decode_timestamp(pb.registered_at),
        document=pb.document,
    )
