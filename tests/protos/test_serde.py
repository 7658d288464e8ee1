"""`ehds.federation.serde`: every model message survives encode -> bytes -> decode unchanged.

Why: serde is the only translation between protobuf and the model, so a field it forgets is
silently lost between node and coordinator. The samples set every field to a non-default
value (checked on the encoded message), and the protocol's evolution rules (unknown oneof case,
unknown enum value, unset Timestamp) are tested on the wire format.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum
from typing import Any, TypeVar

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ehds.core.errors import InputError
from ehds.federation import model, serde
from ehds.federation.v1 import admin_api_pb2, common_pb2, node_link_pb2, study_api_pb2

P = TypeVar("P", bound=Message)

NOW = datetime(2026, 3, 1, 12, 30, 15, 250_000, tzinfo=UTC)
PROFILE = model.NodeProfile(
    software=model.SoftwareInfo("ehds-federation", "0.1.0"),
    cdm_version="5.4",
    vocabulary_version="v5.0 30-AUG-24",
    engine="duckdb",
    capabilities=(model.AnalysisRef("person_count", "1.0.0"), model.AnalysisRef("x", "2.0.0")),
    policy_version="2026-01-15",
)
SPEC = model.StudySpec(
    title="Diabetes prevalence",
    analysis=model.AnalysisRef("person_count", "1.0.0"),
    parameters=b'{"min_age":18}',
    min_nodes=2,
    deadline_seconds=600,
    target_nodes=("hospital-a", "hospital-b"),
    data_permit_id="permit-7",
)
NODE_STATUS = model.StudyNodeStatus(
    node_name="hospital-a",
    state=model.NodeTaskState.FAILED,
    error_code=model.ErrorCode.INTERNAL,
    reason="internal error",
    vocabulary_version="v5.0 30-AUG-24",
    stage=model.TaskStage.COMPUTING,
    fraction=0.5,
    updated_at=NOW,
)
STUDY = model.Study(
    id="study-1",
    spec=SPEC,
    state=model.StudyState.RUNNING,
    state_reason="running",
    nodes=(NODE_STATUS,),
    submitted_by="alice",
    created_at=NOW - timedelta(minutes=5),
    updated_at=NOW,
    round=1,
)
NODE_INFO = model.NodeInfo(
    name="hospital-a",
    connected=True,
    last_seen=NOW,
    protocol_version=model.ProtocolVersion(1, 1),
    profile=PROFILE,
    revoked=True,
)
CHUNK = model.PayloadChunk(
    index=2, count=3, data=b"data", sha256=hashlib.sha256(b"x").digest(), content_type="a/b"
)

HEAD = model.AuditRef("node hospital-a", 12, "ab" * 32)
NODE_MESSAGES: Sequence[model.NodeMessage] = (
    model.Hello(model.ProtocolVersion(1, 1), PROFILE),
    model.Heartbeat(seq=7, in_flight_task_ids=("t1", "t2"), audit_head=HEAD),
    model.TaskAck("t1"),
    model.TaskProgress("t1", 0.25, model.TaskStage.QUERYING),
    model.ResultChunk("t1", CHUNK, audit_head=HEAD),
    model.TaskOutcome(
        "t1", model.ErrorCode.POLICY_REFUSED, "analysis not allowed", audit_head=HEAD
    ),
)
COORDINATOR_MESSAGES: Sequence[model.CoordinatorMessage] = (
    model.Welcome(
        node_name="hospital-a",
        protocol_version=model.ProtocolVersion(1, 1),
        heartbeat_interval=timedelta(seconds=15, milliseconds=500),
        coordinator_software=model.SoftwareInfo("ehds-federation", "0.1.0"),
        coordinator_time=NOW,
        coordinator_certificate=b"-----BEGIN CERTIFICATE-----",
    ),
    model.TaskAssignment(
        task_id="t1",
        study_id="study-1",
        analysis=model.AnalysisRef("person_count", "1.0.0"),
        parameters=b"{}",
        deadline=NOW + timedelta(minutes=10),
        min_cell_count=5,
        data_permit_id="permit-7",
        requested_by="alice",
        permit=b'{"format":"ehds-data-permit/1"}',
        nonce="3f1c",
        expires_at=NOW + timedelta(minutes=10),
        coordinator_audit_ref=model.AuditRef("coordinator coordinator", 3, "cd" * 32),
        signature="MEUCIQ==",
    ),
    model.CancelTask("t1", "study cancelled by requester"),
    model.ResultReceipt("t1", hashlib.sha256(b"result").digest()),
)


def _assert_every_field_set(message: Message, path: str = "") -> None:
    """Every field (every case of a oneof: the set one) has a non-default value, recursively."""
    descriptor = message.DESCRIPTOR
    set_fields = {field.name: value for field, value in message.ListFields()}
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and message.WhichOneof(oneof.name) != field.name:
            continue
        name = f"{path}{field.name}"
        assert field.name in set_fields, f"{name} is not set"
        value = set_fields[field.name]
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.is_repeated:
            for item in value:
                _assert_every_field_set(item, f"{name}[].")
        elif field.message_type is not None and field.message_type.full_name.startswith("ehds."):
            _assert_every_field_set(value, f"{name}.")


def _wire(message: P) -> P:
    """`message` after a trip through its wire format, as a peer receives it."""
    return type(message).FromString(message.SerializeToString())


@pytest.mark.parametrize("message", NODE_MESSAGES, ids=lambda m: type(m).__name__)
def test_node_messages_round_trip(message: model.NodeMessage) -> None:
    encoded = serde.encode_node_message(message)
    _assert_every_field_set(encoded)
    assert serde.decode_node_message(_wire(encoded)) == message


@pytest.mark.parametrize("message", COORDINATOR_MESSAGES, ids=lambda m: type(m).__name__)
def test_coordinator_messages_round_trip(message: model.CoordinatorMessage) -> None:
    encoded = serde.encode_coordinator_message(message)
    _assert_every_field_set(encoded)
    assert serde.decode_coordinator_message(_wire(encoded)) == message


def _case_names(message: Message) -> set[str]:
    return {
        field.message_type.name
        for field in message.DESCRIPTOR.fields
        if field.message_type is not None
    }


def test_every_message_kind_has_a_sample() -> None:
    node_kinds = {type(m).__name__ for m in NODE_MESSAGES}
    coordinator_kinds = {type(m).__name__ for m in COORDINATOR_MESSAGES}
    assert node_kinds == _case_names(node_link_pb2.NodeMessage())
    assert coordinator_kinds == _case_names(node_link_pb2.CoordinatorMessage())


@pytest.mark.parametrize(
    ("value", "encode", "decode"),
    [
        (SPEC, serde.encode_study_spec, serde.decode_study_spec),
        (STUDY, serde.encode_study, serde.decode_study),
        (NODE_INFO, serde.encode_node_info, serde.decode_node_info),
        (CHUNK, serde.encode_chunk, serde.decode_chunk),
        (PROFILE, serde.encode_profile, serde.decode_profile),
    ],
    ids=["StudySpec", "Study", "NodeInfo", "PayloadChunk", "NodeProfile"],
)
def test_api_types_round_trip(
    value: object, encode: Callable[[Any], Message], decode: Callable[[Any], object]
) -> None:
    encoded = encode(value)
    _assert_every_field_set(encoded)
    assert decode(_wire(encoded)) == value


def test_optional_fields_left_unset_decode_as_none() -> None:
    welcome = model.Welcome(
        node_name="hospital-a",
        protocol_version=model.ProtocolVersion(1, 0),
        heartbeat_interval=timedelta(seconds=10),
        coordinator_software=model.SoftwareInfo("ehds-federation", "0.1.0"),
    )
    encoded = serde.encode_coordinator_message(welcome)
    assert not encoded.welcome.HasField("coordinator_time")
    assert serde.decode_coordinator_message(_wire(encoded)) == welcome
    bare_node = model.NodeInfo("hospital-b", False, None, None, None, False)
    assert serde.decode_node_info(_wire(serde.encode_node_info(bare_node))) == bare_node
    bare_study = model.Study("study-2", SPEC, model.StudyState.SUBMITTED)
    assert serde.decode_study(_wire(serde.encode_study(bare_study))) == bare_study
    assert serde.decode_study_node_status(study_api_pb2.StudyNodeStatus()).updated_at is None


def test_an_assignment_from_a_1_1_coordinator_has_no_requester() -> None:
    """Protocol 1.2 added `requested_by`; a 1.1 coordinator's assignment decodes with "" (the
    node's differencing guard then keys on the permit alone)."""
    wire = node_link_pb2.CoordinatorMessage(
        task_assignment=node_link_pb2.TaskAssignment(
            task_id="t",
            analysis=common_pb2.AnalysisRef(name="a", version="1"),
            deadline=serde.encode_timestamp(NOW),
            data_permit_id="permit-7",
        )
    )
    decoded = serde.decode_coordinator_message(_wire(wire))
    assert isinstance(decoded, model.TaskAssignment)
    assert decoded.requested_by == ""


def test_timestamps_are_aware_utc() -> None:
    paris = timezone(timedelta(hours=1))
    local = NOW.astimezone(paris)
    encoded = serde.encode_timestamp(local)
    decoded = serde.decode_timestamp(encoded)
    assert decoded == NOW
    assert decoded.tzinfo is UTC
    with pytest.raises(ValueError, match="naive"):
        serde.encode_timestamp(datetime(2026, 1, 1))


# --------------------------------------------------------------------------- enums


ENUM_MEMBERS: list[IntEnum] = [
    member
    for kind in (model.ErrorCode, model.TaskStage, model.StudyState, model.NodeTaskState)
    for member in kind
]


def _status_with(member: IntEnum) -> model.Study:
    """A study that carries `member` in the field of its type."""
    if isinstance(member, model.StudyState):
        return model.Study("s", SPEC, member)
    status = model.StudyNodeStatus("n", model.NodeTaskState.RUNNING)
    if isinstance(member, model.NodeTaskState):
        status = model.StudyNodeStatus("n", member)
    elif isinstance(member, model.ErrorCode):
        status = model.StudyNodeStatus("n", model.NodeTaskState.FAILED, error_code=member)
    elif isinstance(member, model.TaskStage):
        status = model.StudyNodeStatus("n", model.NodeTaskState.RUNNING, stage=member)
    return model.Study("s", SPEC, model.StudyState.RUNNING, nodes=(status,))


@pytest.mark.parametrize("member", ENUM_MEMBERS, ids=lambda m: f"{type(m).__name__}.{m.name}")
def test_every_enum_value_round_trips(member: IntEnum) -> None:
    study = _status_with(member)
    assert serde.decode_study(_wire(serde.encode_study(study))) == study


def test_model_enums_match_the_protobuf_enums() -> None:
    pairs = [
        (model.ErrorCode, common_pb2.ErrorCode, "ERROR_CODE_"),
        (model.TaskStage, common_pb2.TaskStage, "TASK_STAGE_"),
        (model.StudyState, study_api_pb2.StudyState, "STUDY_STATE_"),
        (model.NodeTaskState, study_api_pb2.NodeTaskState, "NODE_TASK_STATE_"),
    ]

    # The one deliberate difference: the model calls "released" what the wire still calls DONE.
    def wire_name(member: IntEnum) -> str:
        return "DONE" if member is model.NodeTaskState.RELEASED else member.name

    for kind, pb_enum, prefix in pairs:
        members: list[IntEnum] = list(kind)
        assert {f"{prefix}{wire_name(m)}": int(m) for m in members} == dict(pb_enum.items())


def test_unknown_enum_values_decode_as_unspecified() -> None:
    outcome = node_link_pb2.NodeMessage(task_outcome=node_link_pb2.TaskOutcome(task_id="t"))
    outcome.task_outcome.error_code = common_pb2.ErrorCode.ValueType(99)  # a newer peer's value
    decoded = serde.decode_node_message(_wire(outcome))
    assert decoded == model.TaskOutcome("t", model.ErrorCode.UNSPECIFIED, "")

    progress = node_link_pb2.NodeMessage(task_progress=node_link_pb2.TaskProgress(task_id="t"))
    progress.task_progress.stage = common_pb2.TaskStage.ValueType(42)
    decoded_progress = serde.decode_node_message(_wire(progress))
    assert isinstance(decoded_progress, model.TaskProgress)
    assert decoded_progress.stage is model.TaskStage.UNSPECIFIED

    study = serde.encode_study(_status_with(model.ErrorCode.INTERNAL))
    study.state = study_api_pb2.StudyState.ValueType(77)
    study.nodes[0].state = study_api_pb2.NodeTaskState.ValueType(77)
    study.nodes[0].error_code = common_pb2.ErrorCode.ValueType(77)
    study.nodes[0].stage = common_pb2.TaskStage.ValueType(77)
    decoded_study = serde.decode_study(_wire(study))
    assert decoded_study.state is model.StudyState.UNSPECIFIED
    node = decoded_study.nodes[0]
    assert node.state is model.NodeTaskState.UNSPECIFIED
    assert node.error_code is model.ErrorCode.UNSPECIFIED
    assert node.stage is model.TaskStage.UNSPECIFIED


# --------------------------------------------------------------------------- evolution, violations


def _unknown_case() -> bytes:
    """Wire bytes of a message whose only field is number 99, an empty sub-message: what a
    newer minor version's new oneof case looks like to this one."""
    return bytes([(99 << 3 | 2) & 0x7F | 0x80, (99 << 3 | 2) >> 7, 0])


def test_an_unknown_oneof_case_decodes_as_none() -> None:
    node = node_link_pb2.NodeMessage.FromString(_unknown_case())
    assert serde.decode_node_message(node) is None
    coordinator = node_link_pb2.CoordinatorMessage.FromString(_unknown_case())
    assert serde.decode_coordinator_message(coordinator) is None
    assert serde.decode_node_message(node_link_pb2.NodeMessage()) is None


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (node_link_pb2.NodeMessage(hello=node_link_pb2.Hello()), "Hello.protocol_version"),
        (
            node_link_pb2.NodeMessage(
                hello=node_link_pb2.Hello(protocol_version=common_pb2.ProtocolVersion(major=1))
            ),
            "Hello.profile",
        ),
        (
            node_link_pb2.NodeMessage(
                hello=node_link_pb2.Hello(
                    protocol_version=common_pb2.ProtocolVersion(major=1),
                    profile=common_pb2.NodeProfile(cdm_version="5.4"),
                )
            ),
            "Hello.profile.software",
        ),
        (
            node_link_pb2.NodeMessage(result_chunk=node_link_pb2.ResultChunk(task_id="t")),
            "ResultChunk.chunk",
        ),
    ],
)
def test_a_missing_required_sub_message_is_a_protocol_violation(
    message: node_link_pb2.NodeMessage, field: str
) -> None:
    with pytest.raises(serde.ProtocolViolation, match=f"{field} is not set") as failure:
        serde.decode_node_message(message)
    assert failure.value.field == field
    assert isinstance(failure.value, InputError)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (
            node_link_pb2.CoordinatorMessage(welcome=node_link_pb2.Welcome(node_name="n")),
            "Welcome.protocol_version",
        ),
        (
            node_link_pb2.CoordinatorMessage(
                task_assignment=node_link_pb2.TaskAssignment(
                    task_id="t", analysis=common_pb2.AnalysisRef(name="a", version="1")
                )
            ),
            "TaskAssignment.deadline",
        ),
    ],
)
def test_a_coordinator_message_missing_a_sub_message_is_a_protocol_violation(
    message: node_link_pb2.CoordinatorMessage, field: str
) -> None:
    with pytest.raises(serde.ProtocolViolation, match=f"{field} is not set"):
        serde.decode_coordinator_message(message)


def test_a_study_without_spec_is_a_protocol_violation() -> None:
    with pytest.raises(serde.ProtocolViolation, match=r"Study\.spec is not set"):
        serde.decode_study(study_api_pb2.Study(id="s"))
    with pytest.raises(serde.ProtocolViolation, match=r"StudySpec\.analysis is not set"):
        serde.decode_study_spec(study_api_pb2.StudySpec(title="t"))
    with pytest.raises(serde.ProtocolViolation, match=r"NodeInfo\.profile\.software"):
        serde.decode_node_info(admin_api_pb2.NodeInfo(profile=common_pb2.NodeProfile()))
