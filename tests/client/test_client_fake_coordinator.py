"""`CoordinatorClient` and `ehds study` / `ehds admin` against a scripted coordinator.

The server is a real grpcio server on 127.0.0.1 with mutual TLS from `ehds.pki`, serving the
generated StudyApi, AdminApi, PermitApi and AuditApi with canned behaviour: what the client
sends, how it maps gRPC statuses to typed errors, how it reassembles a result over 4 MiB, and
how `watch`/`wait` survive a stream that ends early are checked here without the coordinator
service. The real coordinator end to end is tested with it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest

from ehds.analyses.base import canonical_json
from ehds.analyses.results import (
    SummarisedResult,
    make_row,
    pool_additive,
    validate_node_result,
)
from ehds.analyses.testing import blob
from ehds.cli.main import main as cli_main
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import ClientConfig
from ehds.coordinator.client_errors import (
    AccessDeniedError,
    ConflictError,
    CoordinatorUnavailableError,
    ResultDocumentError,
    ResultsNotReadyError,
    StudyNotFoundError,
    StudyRejectedError,
    StudyWaitTimeoutError,
)
from ehds.core.errors import InputError, StateError
from ehds.core.netconfig import CoordinatorEndpoint, TlsFiles
from ehds.federation import serde
from ehds.federation.chunks import split_payload
from ehds.federation.model import (
    AnalysisRef,
    ErrorCode,
    NodeInfo,
    NodeProfile,
    NodeTaskState,
    PermitInfo,
    ProtocolVersion,
    SoftwareInfo,
    Study,
    StudyNodeStatus,
    StudySpec,
    StudyState,
)
from ehds.federation.transport import peer_identity, server_credentials
from ehds.federation.v1 import (
    admin_api_pb2,
    admin_api_pb2_grpc,
    audit_api_pb2,
    audit_api_pb2_grpc,
    permit_api_pb2,
    permit_api_pb2_grpc,
    study_api_pb2,
    study_api_pb2_grpc,
)
from ehds.pki.authority import init_authority
from ehds.pki.identity import Role
from ehds.pki.issue import issue_certificate

NOW = datetime(2025, 3, 1, 14, 2, 7, tzinfo=UTC)
NODES = ("dk", "fi", "fr")
SPEC = StudySpec(
    title="Persons by sex and age band",
    analysis=AnalysisRef("person_count", "1.0.0"),
    parameters=b'{"age_band_edges":[0,18,45,65],"reference_year":2025}',
    min_nodes=2,
    deadline_seconds=600,
)


def _study(study_id: str, state: StudyState, *node_states: NodeTaskState) -> Study:
    states = node_states or (NodeTaskState.DISPATCHED,) * len(NODES)
    return Study(
        id=study_id,
        spec=SPEC,
        state=state,
        nodes=tuple(
            StudyNodeStatus(
                node_name=name,
                state=s,
                error_code=(
                    ErrorCode.POLICY_REFUSED
                    if s is NodeTaskState.REFUSED
                    else ErrorCode.UNSPECIFIED
                ),
                reason="analysis not allowed by policy" if s is NodeTaskState.REFUSED else "",
                vocabulary_version="v5.0 22-JAN-25",
                fraction=0.5 if s is NodeTaskState.RUNNING else 0.0,
            )
            for name, s in zip(NODES, states, strict=True)
        ),
        submitted_by="alice",
        created_at=NOW,
        updated_at=NOW,
    )


def _document(study_id: str) -> dict[str, object]:
    cells: list[dict[str, object]] = [
        {
            "sex": sex,
            "age_band": band,
            "count": 0 if sex == "OTHER/UNKNOWN" else 1200,
            "complete": True,
            "suppressed_at": [],
        }
        for sex in ("FEMALE", "MALE", "OTHER/UNKNOWN")
        for band in ("0-17", "18-44", "45-64", "65+")
    ]
    cells[3] = {**cells[3], "count": 95, "complete": False, "suppressed_at": ["dk"]}
    return {
        "study_id": study_id,
        "analysis": {"name": "person_count", "version": "1.0.0"},
        "min_cell_count": 10,
        "pooled": {"cells": cells},
        "contributors": ["dk", "fi"],
        "nodes": [
            {"node": "dk", "state": "DONE", "error_code": "", "reason": "",
             "vocabulary_version": "v5.0", "result": {"cells": [], "min_cell_count": 10}},
            {"node": "fi", "state": "DONE", "error_code": "", "reason": "",
             "vocabulary_version": "v5.0", "result": {"cells": [], "min_cell_count": 10}},
            {"node": "fr", "state": "REFUSED", "error_code": "POLICY_REFUSED",
             "reason": "analysis not allowed by policy", "vocabulary_version": "v5.0",
             "result": None},
        ],
    }  # fmt: skip


@dataclass
class Script:
    """What the fake coordinator does; tests change it and read what it received."""

    submits: list[study_api_pb2.SubmitStudyRequest] = field(default_factory=list)
    callers: list[str] = field(default_factory=list)
    # Watch: one list of snapshots per stream opened; a stream whose last snapshot is not
    # final just ends (as when a coordinator shuts down).
    watch_streams: list[list[Study]] = field(default_factory=list)
    watch_opened: int = 0
    documents: dict[str, bytes] = field(default_factory=dict)
    corrupt_digest: bool = False
    cancels: list[tuple[str, str]] = field(default_factory=list)
    revokes: list[tuple[str, str]] = field(default_factory=list)
    registered: list[bytes] = field(default_factory=list)
    audit_requests: list[audit_api_pb2.ExportAuditRequest] = field(default_factory=list)
    audit_batches: list[list[bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeStudyApi(study_api_pb2_grpc.StudyApiServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def _who(self, context: grpc.ServicerContext) -> str:
        identity = peer_identity(context)
        assert identity is not None
        with self.script.lock:
            self.script.callers.append(identity.name)
        return identity.name

    def Submit(  # noqa: N802
        self, request: study_api_pb2.SubmitStudyRequest, context: grpc.ServicerContext
    ) -> study_api_pb2.SubmitStudyResponse:
        who = self._who(context)
        self.script.submits.append(request)
        spec = serde.decode_study_spec(request.spec)
        if spec.min_nodes > len(NODES):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"spec.min_nodes: {spec.min_nodes} is more than the 3 target nodes",
            )
        study = replace(_study("st-1", StudyState.SUBMITTED), spec=spec, submitted_by=who)
        return study_api_pb2.SubmitStudyResponse(study=serde.encode_study(study))

    def Get(  # noqa: N802
        self, request: study_api_pb2.GetStudyRequest, context: grpc.ServicerContext
    ) -> study_api_pb2.GetStudyResponse:
        self._who(context)
        if request.study_id == "slow":
            time.sleep(1.5)
        if request.study_id not in ("st-1", "slow"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no study {request.study_id}")
        study = _study(request.study_id, StudyState.RUNNING, *(NodeTaskState.RUNNING,) * 3)
        return study_api_pb2.GetStudyResponse(study=serde.encode_study(study))

    def List(  # noqa: N802
        self, request: study_api_pb2.ListStudiesRequest, context: grpc.ServicerContext
    ) -> study_api_pb2.ListStudiesResponse:
        self._who(context)
        page = int(request.page_token or "0")
        ids = [f"st-{n}" for n in range(5)][page * 2 : page * 2 + 2]
        studies = [
            serde.encode_study(
                replace(_study(i, StudyState.COMPLETED), spec=replace(SPEC, parameters=b""))
            )
            for i in ids
        ]
        token = str(page + 1) if page < 2 else ""
        return study_api_pb2.ListStudiesResponse(studies=studies, next_page_token=token)

    def Cancel(  # noqa: N802
        self, request: study_api_pb2.CancelStudyRequest, context: grpc.ServicerContext
    ) -> study_api_pb2.CancelStudyResponse:
        self._who(context)
        self.script.cancels.append((request.study_id, request.reason))
        study = _study(request.study_id, StudyState.CANCELLED, *(NodeTaskState.CANCELLED,) * 3)
        return study_api_pb2.CancelStudyResponse(study=serde.encode_study(study))

    def Watch(  # noqa: N802
        self, request: study_api_pb2.WatchStudyRequest, context: grpc.ServicerContext
    ) -> Iterator[study_api_pb2.StudyEvent]:
        self._who(context)
        with self.script.lock:
            index = self.script.watch_opened
            self.script.watch_opened += 1
        streams = self.script.watch_streams
        snapshots = streams[min(index, len(streams) - 1)]
        for snapshot in snapshots:
            yield study_api_pb2.StudyEvent(study=serde.encode_study(snapshot))
            time.sleep(0.01)

    def GetResults(  # noqa: N802
        self, request: study_api_pb2.GetStudyResultsRequest, context: grpc.ServicerContext
    ) -> Iterator[study_api_pb2.StudyResultsChunk]:
        self._who(context)
        data = self.script.documents.get(request.study_id)
        if data is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "study st-9 is RUNNING")
        chunks = split_payload(data, "application/json")
        if self.script.corrupt_digest:
            chunks[-1] = replace(chunks[-1], sha256=b"\0" * 32)
        for chunk in chunks:
            yield study_api_pb2.StudyResultsChunk(
                study_id=request.study_id, chunk=serde.encode_chunk(chunk)
            )


class FakeAdminApi(admin_api_pb2_grpc.AdminApiServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def _operator_only(self, context: grpc.ServicerContext) -> None:
        identity = peer_identity(context)
        if identity is None or identity.role is not Role.OPERATOR:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "AdminApi needs an operator")

    def ListNodes(  # noqa: N802
        self, request: admin_api_pb2.ListNodesRequest, context: grpc.ServicerContext
    ) -> admin_api_pb2.ListNodesResponse:
        self._operator_only(context)
        nodes = [_node("dk", connected=True), _node("fr", connected=False)]
        return admin_api_pb2.ListNodesResponse(nodes=[serde.encode_node_info(n) for n in nodes])

    def RevokeNode(  # noqa: N802
        self, request: admin_api_pb2.RevokeNodeRequest, context: grpc.ServicerContext
    ) -> admin_api_pb2.RevokeNodeResponse:
        self._operator_only(context)
        self.script.revokes.append((request.name, request.reason))
        node = replace(_node(request.name, connected=False), revoked=True)
        return admin_api_pb2.RevokeNodeResponse(node=serde.encode_node_info(node))


PERMIT = PermitInfo(
    id="FI-2026-042",
    issuer="fi-hdab",
    holders=("alice",),
    purpose="registry study",
    nodes=NODES,
    analyses=("person_count",),
    valid_from=NOW,
    valid_until=NOW.replace(year=2026),
    issued_at=NOW,
    registered_by="researcher alice",
    registered_at=NOW,
    document=b'{"format": "ehds-data-permit/1"}',
)


class FakePermitApi(permit_api_pb2_grpc.PermitApiServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def Register(  # noqa: N802
        self, request: permit_api_pb2.RegisterPermitRequest, context: grpc.ServicerContext
    ) -> permit_api_pb2.RegisterPermitResponse:
        if request.document == b"conflict":
            context.abort(grpc.StatusCode.ALREADY_EXISTS, "permit 'FI-2026-042' is registered")
        if request.document == b"expired":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "permit.expired: it has expired")
        self.script.registered.append(request.document)
        return permit_api_pb2.RegisterPermitResponse(permit=serde.encode_permit(PERMIT))

    def List(  # noqa: N802
        self, request: permit_api_pb2.ListPermitsRequest, context: grpc.ServicerContext
    ) -> permit_api_pb2.ListPermitsResponse:
        return permit_api_pb2.ListPermitsResponse(permits=[serde.encode_permit(PERMIT)])

    def Get(  # noqa: N802
        self, request: permit_api_pb2.GetPermitRequest, context: grpc.ServicerContext
    ) -> permit_api_pb2.GetPermitResponse:
        if request.permit_id != PERMIT.id:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no permit {request.permit_id!r}")
        return permit_api_pb2.GetPermitResponse(permit=serde.encode_permit(PERMIT))


class FakeAuditApi(audit_api_pb2_grpc.AuditApiServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def Export(  # noqa: N802
        self, request: audit_api_pb2.ExportAuditRequest, context: grpc.ServicerContext
    ) -> Iterator[audit_api_pb2.AuditEntryBatch]:
        identity = peer_identity(context)
        if identity is None or identity.role is not Role.AUDITOR:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "AuditApi needs an auditor")
        self.script.audit_requests.append(request)
        for batch in self.script.audit_batches:
            yield audit_api_pb2.AuditEntryBatch(entries=batch)


def _node(name: str, *, connected: bool) -> NodeInfo:
    return NodeInfo(
        name=name,
        connected=connected,
        last_seen=NOW,
        protocol_version=ProtocolVersion(1, 1),
        profile=NodeProfile(
            software=SoftwareInfo("ehds-node", "0.4.0"),
            cdm_version="5.4",
            vocabulary_version="v5.0 22-JAN-25",
            engine="duckdb",
            capabilities=(AnalysisRef("person_count", "1.0.0"),),
            policy_version="2025-01",
        ),
        revoked=False,
    )


@dataclass
class Fake:
    script: Script
    port: int
    pki: Path

    def config(self, name: str = "alice", port: int | None = None) -> ClientConfig:
        issued = self.pki / "issued"
        return ClientConfig(
            coordinator=CoordinatorEndpoint(address=f"localhost:{port or self.port}"),
            tls=TlsFiles(
                certificate=issued / f"{name}.pem", key=issued / f"{name}.key", ca=issued / "ca.pem"
            ),
        )

    def config_file(self, folder: Path, name: str = "alice") -> Path:
        issued = self.pki / "issued"
        path = folder / f"{name}.yaml"
        path.write_text(
            f"coordinator: {{address: 'localhost:{self.port}'}}\n"
            f"tls: {{certificate: '{issued / name}.pem', key: '{issued / name}.key', "
            f"ca: '{issued / 'ca.pem'}'}}\n",
            encoding="utf-8",
        )
        return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pki = tmp_path_factory.mktemp("pki")
    init_authority(pki, "test-federation")
    issue_certificate(pki, Role.COORDINATOR, "coordinator")
    issue_certificate(pki, Role.RESEARCHER, "alice")
    issue_certificate(pki, Role.OPERATOR, "ops")
    issue_certificate(pki, Role.AUDITOR, "audit")
    return pki


@pytest.fixture
def fake(pki: Path) -> Iterator[Fake]:
    script = Script()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    study_api_pb2_grpc.add_StudyApiServicer_to_server(FakeStudyApi(script), server)
    admin_api_pb2_grpc.add_AdminApiServicer_to_server(FakeAdminApi(script), server)
    permit_api_pb2_grpc.add_PermitApiServicer_to_server(FakePermitApi(script), server)
    audit_api_pb2_grpc.add_AuditApiServicer_to_server(FakeAuditApi(script), server)
    issued = pki / "issued"
    credentials = server_credentials(
        TlsFiles(
            certificate=issued / "coordinator.pem",
            key=issued / "coordinator.key",
            ca=issued / "ca.pem",
        )
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield Fake(script, port, pki)
    finally:
        server.stop(grace=None).wait(10)


# --------------------------------------------------------------------------- the client


def test_submit_sends_the_spec_with_a_fresh_request_id(fake: Fake) -> None:
    with CoordinatorClient(fake.config()) as client:
        study = client.submit(SPEC)
        again = client.submit(SPEC, request_id="my-id")
    assert study.id == "st-1"
    assert study.spec == SPEC
    assert study.submitted_by == "alice"  # from the certificate
    first, second = fake.script.submits
    assert serde.decode_study_spec(first.spec) == SPEC
    assert len(first.request_id) == 36  # a uuid4
    assert second.request_id == "my-id"
    assert again.id == "st-1"


def test_rejection_keeps_the_servers_message(fake: Fake) -> None:
    with CoordinatorClient(fake.config()) as client, pytest.raises(StudyRejectedError) as caught:
        client.submit(replace(SPEC, min_nodes=5))
    assert isinstance(caught.value, InputError)
    assert "spec.min_nodes: 5 is more than the 3 target nodes" in str(caught.value)


def test_get_list_cancel(fake: Fake) -> None:
    with CoordinatorClient(fake.config()) as client:
        study = client.get("st-1")
        assert study.state is StudyState.RUNNING
        assert [s.id for s in client.list()] == [f"st-{n}" for n in range(5)]  # 3 pages
        cancelled = client.cancel("st-1", "wrong parameters")
        assert cancelled.state is StudyState.CANCELLED
        with pytest.raises(StudyNotFoundError, match="get study nope: not found"):
            client.get("nope")
    assert fake.script.cancels == [("st-1", "wrong parameters")]


def test_a_slow_coordinator_is_a_typed_timeout(fake: Fake) -> None:
    with (
        CoordinatorClient(fake.config(), timeout=0.3) as client,
        pytest.raises(CoordinatorUnavailableError, match="did not answer in time") as caught,
    ):
        client.get("slow")
    assert f"localhost:{fake.port}" in str(caught.value)
    assert isinstance(caught.value, StateError)


def test_an_unreachable_coordinator_is_named(fake: Fake) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    with CoordinatorClient(fake.config(port=free_port), timeout=5) as client:
        started = time.monotonic()
        with pytest.raises(CoordinatorUnavailableError, match=f"localhost:{free_port}"):
            client.submit(SPEC)
        assert time.monotonic() - started < 10


def test_watch_yields_each_change_once_and_rides_out_early_stream_ends(fake: Fake) -> None:
    submitted = _study("st-1", StudyState.DISPATCHED)
    running = _study("st-1", StudyState.RUNNING, *(NodeTaskState.RUNNING,) * 3)
    done = _study(
        "st-1",
        StudyState.COMPLETED,
        NodeTaskState.RELEASED,
        NodeTaskState.RELEASED,
        NodeTaskState.REFUSED,
    )
    # The first stream ends before the study does; the second starts with the snapshot seen.
    fake.script.watch_streams = [[submitted, running], [running, done]]
    seen: list[StudyState] = []
    with CoordinatorClient(fake.config()) as client:
        snapshots = list(client.watch("st-1", progress=lambda s: seen.append(s.state)))
    assert [s.state for s in snapshots] == [
        StudyState.DISPATCHED,
        StudyState.RUNNING,
        StudyState.COMPLETED,
    ]
    assert seen == [s.state for s in snapshots]
    assert fake.script.watch_opened == 2
    assert snapshots[-1].nodes[2].error_code is ErrorCode.POLICY_REFUSED


def test_wait_returns_the_final_study_or_times_out(fake: Fake) -> None:
    running = _study("st-1", StudyState.RUNNING)
    fake.script.watch_streams = [[running, _study("st-1", StudyState.FAILED)]]
    with CoordinatorClient(fake.config()) as client:
        assert client.wait("st-1", timeout=10).state is StudyState.FAILED
        fake.script.watch_streams = [[running]]  # never ends
        started = time.monotonic()
        with pytest.raises(StudyWaitTimeoutError, match="last state RUNNING"):
            client.wait("st-1", timeout=1.0)
        assert time.monotonic() - started < 5


def test_results_over_4_mib_are_reassembled(fake: Fake) -> None:
    document = {
        **_document("st-1"),
        "pooled": {"sizes": {"fr": 5_000_000}},
        "extra": blob(5_000_000),
    }
    data = canonical_json(document)
    assert len(data) > 4 * 1024 * 1024
    fake.script.documents["st-1"] = data
    with CoordinatorClient(fake.config()) as client:
        assert client.results("st-1") == document
        with pytest.raises(ResultsNotReadyError, match="RUNNING"):
            client.results("st-9")
        fake.script.corrupt_digest = True
        with pytest.raises(ResultDocumentError, match="SHA-256"):
            client.results("st-1")


def test_admin_api_needs_an_operator_certificate(fake: Fake) -> None:
    with (
        CoordinatorClient(fake.config("alice")) as client,
        pytest.raises(AccessDeniedError, match="refused this certificate"),
    ):
        client.list_nodes()
    with CoordinatorClient(fake.config("ops")) as client:
        nodes = client.list_nodes()
        assert [(n.name, n.connected) for n in nodes] == [("dk", True), ("fr", False)]
        assert nodes[0].profile is not None
        assert nodes[0].profile.capabilities == (AnalysisRef("person_count", "1.0.0"),)
        revoked = client.revoke_node("fr", "stolen laptop")
        assert revoked.revoked
    assert fake.script.revokes == [("fr", "stolen laptop")]


def test_permit_calls_and_their_errors(fake: Fake) -> None:
    with CoordinatorClient(fake.config()) as client:
        assert client.register_permit(b"a permit") == PERMIT
        assert client.list_permits() == [PERMIT]
        assert client.get_permit("FI-2026-042") == PERMIT
        with pytest.raises(ConflictError, match="register permit: permit 'FI-2026-042'"):
            client.register_permit(b"conflict")
        with pytest.raises(StudyRejectedError, match=r"register permit: .*permit\.expired"):
            client.register_permit(b"expired")
        with pytest.raises(StudyNotFoundError, match="get permit other: not found"):
            client.get_permit("other")
    assert fake.script.registered == [b"a permit"]


def test_audit_export_streams_every_line_in_order(fake: Fake) -> None:
    fake.script.audit_batches = [[b"line 1", b"line 2"], [b"line 3"]]
    since = datetime(2026, 1, 1, tzinfo=UTC)
    with CoordinatorClient(fake.config("audit")) as client:
        assert list(client.export_audit()) == [b"line 1", b"line 2", b"line 3"]
        assert list(client.export_audit(since=since, after_seq=2)) == [
            b"line 1",
            b"line 2",
            b"line 3",
        ]
    first, second = fake.script.audit_requests
    assert not first.HasField("since")
    assert (serde.decode_timestamp(second.since), second.after_seq) == (since, 2)
    with (
        CoordinatorClient(fake.config("alice")) as client,
        pytest.raises(AccessDeniedError, match="export the audit chain"),
    ):
        list(client.export_audit())


# --------------------------------------------------------------------------- the CLI


def test_cli_submit_wait_prints_progress_status_and_results(
    fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script.watch_streams = [
        [
            _study("st-1", StudyState.DISPATCHED),
            _study("st-1", StudyState.RUNNING, *(NodeTaskState.RUNNING,) * 3),
            _study(
                "st-1",
                StudyState.COMPLETED,
                NodeTaskState.RELEASED,
                NodeTaskState.RELEASED,
                NodeTaskState.REFUSED,
            ),
        ]
    ]
    fake.script.documents["st-1"] = canonical_json(_document("st-1"))
    study_file = tmp_path / "study.yaml"
    study_file.write_text(
        "title: Persons by sex and age band\n"
        "analysis: {name: person_count, version: 1.0.0}\n"
        "min_nodes: 2\n"
        "data_permit_id: permit-1\n",
        encoding="utf-8",
    )
    config = fake.config_file(tmp_path)
    assert cli_main(["study", "--config", str(config), "submit", str(study_file), "--wait"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == (
        "study st-1 submitted: Persons by sex and age band (person_count 1.0.0, 3 nodes)"
    )
    progress = [line[9:] for line in lines[1:4]]
    assert progress == [
        "DISPATCHED  nodes done 0/3  dk:dispatched fi:dispatched fr:dispatched",
        "RUNNING     nodes done 0/3  dk:running(50%) fi:running(50%) fr:running(50%)",
        "COMPLETED   nodes done 3/3  dk:released fi:released fr:refused",
    ]
    assert "study st-1: COMPLETED" in out
    assert "fr    REFUSED  POLICY_REFUSED  analysis not allowed by policy" in out
    assert "pooled over: dk, fi" in out
    assert "FEMALE         65+            95  incomplete: suppressed at dk" in out


def test_cli_results_formats_and_config_from_the_environment(
    fake: Fake,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    document = _document("st-1")
    fake.script.documents["st-1"] = canonical_json(document)
    monkeypatch.setenv("EHDS_CLIENT_CONFIG", str(fake.config_file(tmp_path)))
    assert cli_main(["study", "results", "st-1", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == document
    assert cli_main(["study", "results", "st-1", "--format", "csv"]) == 0
    csv_lines = capsys.readouterr().out.splitlines()
    assert csv_lines[0] == "sex,age_band,persons,flags"
    assert csv_lines[4] == "FEMALE,65+,95,incomplete: suppressed at dk"
    assert len(csv_lines) == 13
    assert cli_main(["study", "status", "st-1"]) == 0
    assert "study st-1: RUNNING" in capsys.readouterr().out
    assert cli_main(["study", "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["id", "state", "analysis", "nodes", "done", "created", "title"]
    assert len(listing) == 2 + 5
    assert cli_main(["study", "cancel", "st-1", "--reason", "typo"]) == 0
    assert capsys.readouterr().out == "study st-1: CANCELLED\n"
    assert fake.script.cancels == [("st-1", "typo")]
    # Errors are one line on stderr and exit code 2.
    assert cli_main(["study", "status", "nope"]) == 2
    assert "ehds: error: get study nope: not found" in capsys.readouterr().err


def test_cli_admin_nodes_and_revoke(
    fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(fake.config_file(tmp_path, "ops"))
    assert cli_main(["admin", "--config", config, "nodes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "connected", "last", "seen"]
    assert lines[2].split() == [
        "dk", "yes", "2025-03-01", "14:02:07Z", "1.1", "ehds-node", "0.4.0", "5.4",
        "v5.0", "22-JAN-25", "duckdb", "no", "person_count", "1.0.0",
    ]  # fmt: skip
    assert lines[3].startswith("fr    no ")
    # --config after the command works too.
    assert cli_main(["admin", "revoke", "fr", "--reason", "stolen laptop", "--config", config]) == 0
    assert capsys.readouterr().out == "node fr: revoked (connected: no)\n"


def test_insecure_mode_names_the_caller_from_its_certificate(fake: Fake) -> None:
    """Against a coordinator running ``--insecure`` the caller names itself in metadata."""
    from ehds.coordinator.client import INSECURE_IDENTITY_HEADER
    from ehds.coordinator.service.access import INSECURE_IDENTITY_HEADER as SERVER_HEADER

    assert INSECURE_IDENTITY_HEADER == SERVER_HEADER
    seen: list[tuple[tuple[str, str], ...]] = []

    class Echo(FakeStudyApi):
        def Get(  # noqa: N802
            self, request: study_api_pb2.GetStudyRequest, context: grpc.ServicerContext
        ) -> study_api_pb2.GetStudyResponse:
            seen.append(tuple((m.key, m.value) for m in context.invocation_metadata()))  # type: ignore[attr-defined]
            study = _study(request.study_id, StudyState.RUNNING)
            return study_api_pb2.GetStudyResponse(study=serde.encode_study(study))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    study_api_pb2_grpc.add_StudyApiServicer_to_server(Echo(Script()), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with CoordinatorClient(fake.config(port=port), insecure=True) as client:
            assert client.get("st-1").id == "st-1"
        with CoordinatorClient(
            fake.config(port=port), insecure=True, insecure_identity="operator/ops"
        ) as client:
            client.get("st-1")
    finally:
        server.stop(grace=None).wait(10)
    assert (INSECURE_IDENTITY_HEADER, "researcher/alice") in seen[0]
    assert (INSECURE_IDENTITY_HEADER, "operator/ops") in seen[1]


# --------------------------------------------------------------------------- result exports


def _summarised_document(study_id: str) -> dict[str, object]:
    """A summarised-result document: fr's MALE cell suppressed, aggregate lists pooled rows
    only (the export adds each node's released rows)."""

    def released(female: int, male: int | None) -> dict[str, object]:
        rows = [
            make_row("number subjects", "count", female, strata=("sex", "FEMALE")),
            make_row(
                "number subjects", "count", male, strata=("sex", "MALE"), suppressed=male is None
            ),
        ]
        return SummarisedResult(min_cell_count=10, rows=rows).to_json()

    nodes = {"dk": released(40, 25), "fr": released(30, None)}
    parsed = {node: validate_node_result("counts", node, nodes[node]) for node in nodes}
    pooled = SummarisedResult(
        min_cell_count=10, rows=pool_additive(parsed), suppressed_cells={"dk": 0, "fr": 1}
    ).to_json()
    return {
        "study_id": study_id,
        "analysis": {"name": "counts", "version": "1.0.0"},
        "min_cell_count": 10,
        "pooled": pooled,
        "contributors": ["dk", "fr"],
        "nodes": [
            {"node": node, "state": "DONE", "error_code": "", "reason": "",
             "vocabulary_version": "v5.0", "result": nodes[node]}
            for node in ("dk", "fr")
        ],
    }  # fmt: skip


def test_client_results_table_and_export(fake: Fake, tmp_path: Path) -> None:
    fake.script.documents["st-1"] = canonical_json(_summarised_document("st-1"))
    fake.script.documents["st-2"] = canonical_json(_document("st-2"))
    with CoordinatorClient(fake.config()) as client:
        table = client.results_table("st-1")
        assert table.column_names[0] == "result_id"
        rows = table.to_pylist()
        assert [(r["cdm_name"], r["strata_level"], r["estimate_value"]) for r in rows] == [
            ("pooled", "FEMALE", 70.0),
            ("pooled", "MALE", 25.0),
            ("dk", "FEMALE", 40.0),
            ("dk", "MALE", 25.0),
            ("fr", "FEMALE", 30.0),
            ("fr", "MALE", None),
        ]
        assert (rows[1]["complete"], rows[1]["suppressed_at"]) == (False, ["fr"])
        assert {r["result_id"] for r in rows} == {"st-1"}
        path = client.export_results("st-1", tmp_path / "st-1.parquet", "parquet")
        assert pq.read_table(path).to_pylist() == rows
        legacy = client.results_table("st-2")
        assert legacy.column_names == ["result_id", "sex", "age_band", "persons", "flags"]
        assert legacy.num_rows == 12


def test_cli_results_exports_summarised_results(
    fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script.documents["st-1"] = canonical_json(_summarised_document("st-1"))
    base = ["study", "--config", str(fake.config_file(tmp_path)), "results", "st-1"]
    assert cli_main([*base, "--format", "parquet"]) == 2
    assert "give -o FILE.parquet" in capsys.readouterr().err
    target = tmp_path / "out.parquet"
    assert cli_main([*base, "--format", "parquet", "-o", str(target)]) == 0
    assert f"written to {target} (parquet)" in capsys.readouterr().out
    assert pq.read_table(target).num_rows == 6
    assert cli_main([*base, "--format", "csv", "-o", str(tmp_path / "out.csv")]) == 0
    capsys.readouterr()
    lines = (tmp_path / "out.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("result_id,cdm_name,group_name")
    assert lines[2] == (
        "st-1,pooled,overall,overall,sex,MALE,number subjects,,count,integer,25,FALSE,FALSE,fr"
    )
    assert cli_main([*base, "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 6
    assert cli_main([*base]) == 0
    out = capsys.readouterr().out
    assert "pooled over: dk, fr" in out
    assert out.rstrip().endswith("1 cell suppressed at fr")
