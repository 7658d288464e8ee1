"""Every message of `ehds.federation.v1` survives serialize -> parse with every field set.

The samples below set every field of every message (a coverage test enforces it), so a field
added to a `.proto` without a sample here fails the suite instead of going untested.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from ehds.federation import limits
from ehds.federation.v1 import (
    admin_api_pb2,
    audit_api_pb2,
    common_pb2,
    node_link_pb2,
    permit_api_pb2,
    study_api_pb2,
)
from ehds.federation.version import PROTOCOL_VERSION

FILES: tuple[FileDescriptor, ...] = (
    common_pb2.DESCRIPTOR,
    node_link_pb2.DESCRIPTOR,
    study_api_pb2.DESCRIPTOR,
    admin_api_pb2.DESCRIPTOR,
    permit_api_pb2.DESCRIPTOR,
    audit_api_pb2.DESCRIPTOR,
)

PARAMETERS = b'{"concept_ids":[201826,4329847],"min_age":18}'
RESULT = b"counts as Arrow IPC bytes"
DEADLINE = Timestamp(seconds=1_767_225_600)  # 2026-01-01T00:00:00Z
LAST_SEEN = Timestamp(seconds=1_767_225_000, nanos=500_000_000)


def _profile() -> common_pb2.NodeProfile:
    return common_pb2.NodeProfile(
        software=common_pb2.SoftwareInfo(name="ehds-federation", version="0.1.0"),
        cdm_version="5.4",
        vocabulary_version="v5.0 30-AUG-24",
        engine="postgresql",
        capabilities=[
            common_pb2.AnalysisRef(name="cohort_count", version="1.2.0"),
            common_pb2.AnalysisRef(name="characterization", version="0.3.1"),
        ],
        policy_version="2026-01-15",
    )


def _chunks() -> list[common_pb2.PayloadChunk]:
    """RESULT as a payload of two chunks: content type in the first, digest in the last."""
    half = len(RESULT) // 2
    return [
        common_pb2.PayloadChunk(
            index=0, count=2, data=RESULT[:half], content_type="application/vnd.apache.arrow.stream"
        ),
        common_pb2.PayloadChunk(
            index=1, count=2, data=RESULT[half:], sha256=hashlib.sha256(RESULT).digest()
        ),
    ]


def _audit_ref(seq: int = 41) -> common_pb2.AuditRef:
    return common_pb2.AuditRef(chain="node fr-aphp", seq=seq, hash="ab" * 32)


def _permit() -> permit_api_pb2.Permit:
    return permit_api_pb2.Permit(
        id="HDAB-FR-2026-0042",
        issuer="fr-hdab",
        holders=["researcher-alice"],
        purpose="Type 2 diabetes incidence in three countries",
        nodes=["fr-aphp", "fi-hus"],
        analyses=["counts", "incidence"],
        valid_from=LAST_SEEN,
        valid_until=DEADLINE,
        issued_at=LAST_SEEN,
        registered_by="researcher researcher-alice",
        registered_at=LAST_SEEN,
        document=b'{"format":"ehds-data-permit/1"}',
    )


def _version() -> common_pb2.ProtocolVersion:
    # Not the current version: proto3 does not send zeros, so a 1.0 would leave `minor` untested.
    return common_pb2.ProtocolVersion(major=1, minor=2)


def _study() -> study_api_pb2.Study:
    return study_api_pb2.Study(
        id="st-0001",
        spec=study_api_pb2.StudySpec(
            title="Type 2 diabetes prevalence",
            analysis=common_pb2.AnalysisRef(name="cohort_count", version="1.2.0"),
            parameters=PARAMETERS,
            min_nodes=3,
            deadline_seconds=3600,
            target_nodes=["fr-aphp", "fi-hus", "dk-rh"],
            data_permit_id="HDAB-FR-2026-0042",
        ),
        state=study_api_pb2.STUDY_STATE_FAILED,
        state_reason="2 results, 3 required",
        nodes=[
            study_api_pb2.StudyNodeStatus(
                node_name="fr-aphp",
                state=study_api_pb2.NODE_TASK_STATE_REFUSED,
                error_code=common_pb2.ERROR_CODE_DISCLOSURE_REFUSED,
                reason="result below the minimum cell count",
                vocabulary_version="v5.0 30-AUG-24",
                stage=common_pb2.TASK_STAGE_DISCLOSURE_CHECK,
                fraction=0.75,
                updated_at=LAST_SEEN,
            )
        ],
        submitted_by="CN=researcher@example.org",
        created_at=LAST_SEEN,
        updated_at=DEADLINE,
        round=2,
    )


def _node_info() -> admin_api_pb2.NodeInfo:
    return admin_api_pb2.NodeInfo(
        name="fr-aphp",
        connected=True,
        last_seen=LAST_SEEN,
        protocol_version=_version(),
        profile=_profile(),
        revoked=True,
    )


def node_messages() -> list[node_link_pb2.NodeMessage]:
    """One NodeMessage per oneof case."""
    return [
        node_link_pb2.NodeMessage(
            hello=node_link_pb2.Hello(protocol_version=_version(), profile=_profile())
        ),
        node_link_pb2.NodeMessage(
            heartbeat=node_link_pb2.Heartbeat(
                seq=7, in_flight_task_ids=["t-1", "t-2"], audit_head=_audit_ref()
            )
        ),
        node_link_pb2.NodeMessage(task_ack=node_link_pb2.TaskAck(task_id="t-1")),
        node_link_pb2.NodeMessage(
            task_progress=node_link_pb2.TaskProgress(
                task_id="t-1", fraction=0.5, stage=common_pb2.TASK_STAGE_QUERYING
            )
        ),
        *(
            node_link_pb2.NodeMessage(
                result_chunk=node_link_pb2.ResultChunk(
                    task_id="t-1", chunk=chunk, audit_head=_audit_ref(42)
                )
            )
            for chunk in _chunks()
        ),
        node_link_pb2.NodeMessage(
            task_outcome=node_link_pb2.TaskOutcome(
                task_id="t-2",
                error_code=common_pb2.ERROR_CODE_POLICY_REFUSED,
                message="analysis not allowed by site policy",
                audit_head=_audit_ref(43),
            )
        ),
    ]


def coordinator_messages() -> list[node_link_pb2.CoordinatorMessage]:
    """One CoordinatorMessage per oneof case."""
    return [
        node_link_pb2.CoordinatorMessage(
            welcome=node_link_pb2.Welcome(
                node_name="fr-aphp",
                protocol_version=_version(),
                heartbeat_interval=Duration(seconds=15),
                coordinator_software=common_pb2.SoftwareInfo(
                    name="ehds-federation", version="0.1.0"
                ),
                coordinator_time=Timestamp(seconds=1_790_000_000),
                coordinator_certificate=b"-----BEGIN CERTIFICATE-----...",
            )
        ),
        node_link_pb2.CoordinatorMessage(
            task_assignment=node_link_pb2.TaskAssignment(
                task_id="t-1",
                study_id="st-0001",
                analysis=common_pb2.AnalysisRef(name="cohort_count", version="1.2.0"),
                parameters=PARAMETERS,
                deadline=DEADLINE,
                min_cell_count=10,
                data_permit_id="HDAB-FR-2026-0042",
                requested_by="researcher-alice",
                permit=b'{"format":"ehds-data-permit/1"}',
                nonce="5f0c2b7e9a1d4c3b8e6f",
                expires_at=DEADLINE,
                coordinator_audit_ref=common_pb2.AuditRef(
                    chain="coordinator coordinator", seq=9, hash="cd" * 32
                ),
                signature="MEUCIQ...",
            )
        ),
        node_link_pb2.CoordinatorMessage(
            cancel_task=node_link_pb2.CancelTask(task_id="t-1", reason="study cancelled")
        ),
        node_link_pb2.CoordinatorMessage(
            result_receipt=node_link_pb2.ResultReceipt(
                task_id="t-1", sha256=hashlib.sha256(RESULT).digest()
            )
        ),
    ]


def api_messages() -> list[Message]:
    """Requests and responses of StudyApi and AdminApi."""
    study = _study()
    return [
        study_api_pb2.SubmitStudyRequest(spec=study.spec, request_id="9b7c1f0e"),
        study_api_pb2.SubmitStudyResponse(study=study),
        study_api_pb2.GetStudyRequest(study_id="st-0001"),
        study_api_pb2.GetStudyResponse(study=study),
        study_api_pb2.ListStudiesRequest(page_size=50, page_token="p2"),
        study_api_pb2.ListStudiesResponse(studies=[study, study], next_page_token="p3"),
        study_api_pb2.CancelStudyRequest(study_id="st-0001", reason="wrong cohort"),
        study_api_pb2.CancelStudyResponse(study=study),
        study_api_pb2.WatchStudyRequest(study_id="st-0001"),
        study_api_pb2.StudyEvent(study=study),
        study_api_pb2.GetStudyResultsRequest(study_id="st-0001"),
        *(study_api_pb2.StudyResultsChunk(study_id="st-0001", chunk=c) for c in _chunks()),
        admin_api_pb2.ListNodesRequest(),
        admin_api_pb2.ListNodesResponse(nodes=[_node_info()]),
        admin_api_pb2.RevokeNodeRequest(name="fr-aphp", reason="certificate compromised"),
        admin_api_pb2.RevokeNodeResponse(node=_node_info()),
        permit_api_pb2.RegisterPermitRequest(document=_permit().document),
        permit_api_pb2.RegisterPermitResponse(permit=_permit()),
        permit_api_pb2.ListPermitsRequest(),
        permit_api_pb2.ListPermitsResponse(permits=[_permit()]),
        permit_api_pb2.GetPermitRequest(permit_id="HDAB-FR-2026-0042"),
        permit_api_pb2.GetPermitResponse(permit=_permit()),
        audit_api_pb2.ExportAuditRequest(since=LAST_SEEN, after_seq=40),
        audit_api_pb2.AuditEntryBatch(entries=[b'{"v":1}', b'{"v":1}']),
    ]


def all_samples() -> list[Message]:
    return [*node_messages(), *coordinator_messages(), *api_messages()]


def _set_fields(message: Message) -> Iterator[tuple[str, str]]:
    """(message type, field name) for every field set in `message` and its sub-messages."""
    yield message.DESCRIPTOR.full_name, ""
    for field, value in message.ListFields():
        yield message.DESCRIPTOR.full_name, field.name
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        values = value if field.is_repeated else [value]
        for item in values:
            yield from _set_fields(item)


def _our_messages() -> Iterator[Descriptor]:
    def walk(descriptor: Descriptor) -> Iterator[Descriptor]:
        yield descriptor
        for nested in descriptor.nested_types:
            yield from walk(nested)

    for file in FILES:
        for descriptor in file.message_types_by_name.values():
            yield from walk(descriptor)


@pytest.mark.parametrize(
    "message", all_samples(), ids=lambda m: f"{m.DESCRIPTOR.name}-{m.ByteSize()}"
)
def test_round_trip(message: Message) -> None:
    data = message.SerializeToString(deterministic=True)
    parsed = type(message).FromString(data)
    assert parsed == message
    assert parsed.SerializeToString(deterministic=True) == data


def test_samples_set_every_field_of_every_message() -> None:
    covered = {pair for sample in all_samples() for pair in _set_fields(sample)}
    # ("Type", "") stands for the message itself, so that ListNodesRequest (no fields) counts.
    expected = {(d.full_name, "") for d in _our_messages()}
    expected |= {(d.full_name, f.name) for d in _our_messages() for f in d.fields}
    assert sorted(expected - covered) == []


def test_every_oneof_case_is_sampled() -> None:
    node_cases = {m.WhichOneof("body") for m in node_messages()}
    coordinator_cases = {m.WhichOneof("body") for m in coordinator_messages()}
    assert node_cases == {f.name for f in node_link_pb2.NodeMessage.DESCRIPTOR.fields}
    assert coordinator_cases == {f.name for f in node_link_pb2.CoordinatorMessage.DESCRIPTOR.fields}


def test_an_unknown_message_kind_parses_as_an_unset_oneof() -> None:
    """A newer minor version's message kind reaches an older peer as a message to ignore."""
    future_kind = b"\xfa\x01\x02\x08\x01"  # field 31 (no such case yet), length 2, {1: 1}
    parsed = node_link_pb2.NodeMessage.FromString(future_kind)
    assert parsed.WhichOneof("body") is None


def test_enums_have_prefixed_values_and_an_unspecified_zero() -> None:
    for file in FILES:
        for enum in file.enum_types_by_name.values():
            prefix = "".join(f"_{c}" if c.isupper() else c.upper() for c in enum.name)[1:]
            assert enum.values_by_number[0].name == f"{prefix}_UNSPECIFIED"
            assert all(v.name.startswith(f"{prefix}_") for v in enum.values)


def test_error_codes_are_the_agreed_set() -> None:
    assert [v.name.removeprefix("ERROR_CODE_") for v in common_pb2.ErrorCode.DESCRIPTOR.values] == [
        "UNSPECIFIED",
        "POLICY_REFUSED",
        "ANALYSIS_UNKNOWN",
        "ANALYSIS_VERSION_UNSUPPORTED",
        "INVALID_PARAMETERS",
        "DISCLOSURE_REFUSED",
        "DEADLINE_EXCEEDED",
        "CANCELLED",
        "INTERNAL",
        "CDM_UNAVAILABLE",
        "PERMIT_REFUSED",
        "ASSIGNMENT_REJECTED",
        "RELEASE_REJECTED",
    ]


def test_protocol_version_major_is_the_package_version() -> None:
    for file in FILES:
        assert file.package == f"ehds.federation.v{PROTOCOL_VERSION[0]}"


def test_a_full_chunk_fits_in_one_grpc_message_with_room_to_spare() -> None:
    chunk = node_link_pb2.NodeMessage(
        result_chunk=node_link_pb2.ResultChunk(
            task_id="t" * 64,
            chunk=common_pb2.PayloadChunk(
                index=4_000,
                count=4_001,
                data=b"\xff" * limits.MAX_CHUNK_BYTES,
                sha256=b"\xff" * 32,
                content_type="x" * 128,
            ),
        )
    )
    assert chunk.ByteSize() < limits.MAX_MESSAGE_BYTES // 2
    assignment = node_link_pb2.CoordinatorMessage(
        task_assignment=node_link_pb2.TaskAssignment(
            task_id="t" * 64, parameters=b"{" * limits.MAX_PARAMETERS_BYTES
        )
    )
    assert assignment.ByteSize() < limits.MAX_MESSAGE_BYTES // 2
