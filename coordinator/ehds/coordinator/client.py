"""The client of the coordinator for researchers, operators and auditors: `StudyApi`,
`AdminApi`, `PermitApi` and `AuditApi`.

Synchronous on purpose: its users (the `ehds study` and `ehds admin` commands, the demo, tests)
do one thing at a time, and a plain blocking API is the easiest to use correctly from them.

Every call has a deadline, so a coordinator that accepts the connection and never answers
cannot hang the caller; failures become the typed errors of `client_errors`. Protobuf stays
here: callers get `ehds.federation.model` dataclasses and the result document as a dict.

Results come as the whole document (`results`) or as one table for analysis and export
(`results_table`, `export_results`; see `document_table`): the long summarised-result table
(`ehds.analyses.results`) of every node and the pool, with the study id as ``result_id``, or,
for an analysis that does not produce that format (``person_count``), its pooled table.

Authentication: the caller's certificate (mutual TLS), or an OIDC bearer token (server TLS,
the token sent with every call and re-read from its file each time; see `client_config`).

Watching a study survives a dropped connection: `Watch` sends a full snapshot first and after
every change, so reconnecting loses nothing. `watch` and `wait` therefore re-open the stream
when it ends early (its own deadline, a coordinator restart) and skip snapshots already seen.
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

import grpc

from ehds.coordinator.client_config import ClientConfig, TokenError
from ehds.coordinator.client_errors import (
    CoordinatorUnavailableError,
    ResultDocumentError,
    StudyWaitTimeoutError,
    error_from_rpc,
    status_of,
)
from ehds.core.errors import InputError
from ehds.core.netconfig import Keepalive, TlsFiles
from ehds.federation import serde
from ehds.federation.chunks import PayloadAssembler, PayloadError
from ehds.federation.model import NodeInfo, PermitInfo, Study, StudySpec
from ehds.federation.transport import TlsFilesError, channel_options, client_credentials
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
from ehds.pki.errors import CertificateError
from ehds.pki.identity import Identity

if TYPE_CHECKING:
    import pyarrow as pa

    from ehds.analyses.results import ExportFormat

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "EXPORT_FORMATS",
    "INSECURE_IDENTITY_HEADER",
    "CoordinatorClient",
    "ProgressCallback",
    "document_table",
    "export_document",
]

EXPORT_FORMATS: Final = ("json", "csv", "parquet")

DEFAULT_CALL_TIMEOUT: Final = 30.0
"""Seconds allowed to one unary call (and to a whole result download), unless given."""

AUDIT_EXPORT_TIMEOUT: Final = 3600.0
"""Seconds allowed to a whole audit export (a chain of millions of entries takes minutes)."""

WATCH_STREAM_SECONDS: Final = 300.0
"""Deadline of one Watch stream: longer watches re-open it (snapshots make that lossless)."""

UNAVAILABLE_GRACE_SECONDS: Final = 60.0
"""How long `watch` keeps retrying an unreachable coordinator (e.g. one restarting) before it
gives up with `CoordinatorUnavailableError`. `wait` retries until its own timeout."""

RETRY_PAUSE_SECONDS: Final = (0.2, 0.5, 1.0, 2.0)
"""Pauses between reconnect attempts (the last one repeats)."""

SUBMIT_ATTEMPTS: Final = 3
"""Submit is retried after UNAVAILABLE or a lost answer: the request id makes it idempotent."""

RESULT_CONTENT_TYPE: Final = "application/json"

INSECURE_IDENTITY_HEADER: Final = "x-ehds-insecure-identity"
"""Where a caller names itself to a coordinator running ``--insecure`` (the same constant as
`ehds.coordinator.service.access.INSECURE_IDENTITY_HEADER`, which this module does not import:
that would pull the whole server into every client)."""

ProgressCallback = Callable[[Study], None]
"""Called with each new snapshot of a watched study."""

_T = TypeVar("_T")


class _TokenPlugin(grpc.AuthMetadataPlugin):
    """Adds ``authorization: Bearer <token>`` to every call, the token read afresh each time."""

    def __init__(self, config: ClientConfig) -> None:
        self._config = config

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            token = self._config.token()
        except TokenError as exc:
            callback((), exc)
            return
        callback((("authorization", f"Bearer {token}"),), None)


def _token_credentials(config: ClientConfig) -> grpc.ChannelCredentials:
    """Server TLS against the federation CA, plus the bearer token on every call."""
    try:
        ca = config.tls.ca.read_bytes()
    except OSError as exc:
        raise TlsFilesError(
            f"cannot read the TLS CA certificate {config.tls.ca}: {exc.strerror}"
        ) from None
    config.token()  # fail now, with the reason, rather than on the first call
    return grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=ca),
        grpc.metadata_call_credentials(_TokenPlugin(config), name="ehds-oidc-token"),
    )


class CoordinatorClient:
    """A connection to one coordinator, authenticated by the caller's certificate or token.

    ``insecure=True`` talks plain-text gRPC to a coordinator started with ``--insecure`` (local
    development only): nobody is authenticated, and the caller names itself in the
    ``x-ehds-insecure-identity`` metadata as ``insecure_identity`` ("ROLE/NAME"), by default
    the role and name in the configured certificate (the key and CA are then not read).
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        insecure: bool = False,
        insecure_identity: str | None = None,
    ) -> None:
        endpoint = config.coordinator
        self.address = endpoint.address
        self.timeout = timeout
        options = channel_options(
            Keepalive(), server_name=endpoint.server_name, proxy=endpoint.proxy
        )
        self._metadata: tuple[tuple[str, str], ...] | None = None
        if insecure:
            identity = insecure_identity or _identity_in(config)
            self._metadata = ((INSECURE_IDENTITY_HEADER, identity),)
            self._channel = grpc.insecure_channel(endpoint.address, options=options)
        elif config.uses_token() or not isinstance(config.tls, TlsFiles):
            credentials = _token_credentials(config)
            self._channel = grpc.secure_channel(endpoint.address, credentials, options=options)
        else:
            credentials = client_credentials(config.tls)
            self._channel = grpc.secure_channel(endpoint.address, credentials, options=options)
        self._studies = study_api_pb2_grpc.StudyApiStub(self._channel)
        self._admin = admin_api_pb2_grpc.AdminApiStub(self._channel)
        self._permits = permit_api_pb2_grpc.PermitApiStub(self._channel)
        self._audit = audit_api_pb2_grpc.AuditApiStub(self._channel)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ StudyApi

    def submit(self, spec: StudySpec, request_id: str | None = None) -> Study:
        """Create a study. Retried on UNAVAILABLE or a lost answer with the same request id,
        which the coordinator uses to return the study created the first time."""
        request = study_api_pb2.SubmitStudyRequest(
            spec=serde.encode_study_spec(spec), request_id=request_id or str(uuid.uuid4())
        )
        operation = f"submit study {spec.title!r}"
        for attempt in range(SUBMIT_ATTEMPTS):
            try:
                response = self._call(
                    lambda: self._studies.Submit(
                        request, timeout=self.timeout, metadata=self._metadata
                    ),
                    operation,
                )
                return serde.decode_study(response.study)
            except CoordinatorUnavailableError:
                if attempt == SUBMIT_ATTEMPTS - 1:
                    raise
                time.sleep(_pause(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, study_id: str) -> Study:
        request = study_api_pb2.GetStudyRequest(study_id=study_id)
        response = self._call(
            lambda: self._studies.Get(request, timeout=self.timeout, metadata=self._metadata),
            f"get study {study_id}",
        )
        return serde.decode_study(response.study)

    def list(self) -> list[Study]:
        """Every study the caller may see, newest first (parameters left out, as in List)."""
        studies: list[Study] = []
        token = ""
        while True:
            request = study_api_pb2.ListStudiesRequest(page_token=token)
            response = self._call(
                partial(self._studies.List, request, timeout=self.timeout, metadata=self._metadata),
                "list studies",
            )
            studies.extend(serde.decode_study(pb) for pb in response.studies)
            token = response.next_page_token
            if not token:
                return studies

    def cancel(self, study_id: str, reason: str = "") -> Study:
        request = study_api_pb2.CancelStudyRequest(study_id=study_id, reason=reason)
        response = self._call(
            lambda: self._studies.Cancel(request, timeout=self.timeout, metadata=self._metadata),
            f"cancel study {study_id}",
        )
        return serde.decode_study(response.study)

    def watch(
        self,
        study_id: str,
        *,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> Iterator[Study]:
        """Each new snapshot of the study until it ends (the last one yielded is final).

        ``timeout`` bounds the whole watch (None: until the study ends); on expiry
        `StudyWaitTimeoutError`. An unreachable coordinator is retried for
        `UNAVAILABLE_GRACE_SECONDS`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._snapshots(study_id, deadline, UNAVAILABLE_GRACE_SECONDS, progress)

    def wait(
        self, study_id: str, timeout: float, progress: ProgressCallback | None = None
    ) -> Study:
        """Block until the study ends and return its final state; `StudyWaitTimeoutError`
        after ``timeout`` seconds. Rides out a coordinator restart within that time."""
        deadline = time.monotonic() + timeout
        final: Study | None = None
        for study in self._snapshots(study_id, deadline, None, progress):
            final = study
        # _snapshots returns only after a final snapshot; anything else raised.
        assert final is not None
        return final

    def results(self, study_id: str) -> dict[str, Any]:
        """The result document of a COMPLETED study (see the federation contract), reassembled
        from its chunks and checked against its digest. `ResultsNotReadyError` before then."""
        operation = f"results of study {study_id}"
        request = study_api_pb2.GetStudyResultsRequest(study_id=study_id)

        def download() -> bytes:
            assembler = PayloadAssembler()
            for message in self._studies.GetResults(
                request, timeout=self.timeout, metadata=self._metadata
            ):
                try:
                    payload = assembler.add(serde.decode_chunk(message.chunk))
                except PayloadError as exc:
                    raise ResultDocumentError(f"{operation}: {exc}") from None
                if payload is not None:
                    if payload.content_type != RESULT_CONTENT_TYPE:
                        raise ResultDocumentError(
                            f"{operation}: content type {payload.content_type!r} "
                            f"(expected {RESULT_CONTENT_TYPE})"
                        )
                    return payload.data
            raise ResultDocumentError(f"{operation}: the download ended before its last chunk")

        data = self._call(download, operation)
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise ResultDocumentError(f"{operation}: the result document is not JSON") from None
        if not isinstance(document, dict):
            raise ResultDocumentError(f"{operation}: the result document is not a JSON object")
        return document

    def results_table(self, study_id: str) -> pa.Table:
        """The study's results as one pyarrow table (see `document_table`)."""
        return document_table(self.results(study_id))

    def export_results(self, study_id: str, path: str | Path, fmt: ExportFormat) -> Path:
        """Write the study's results table to ``path`` as json, csv or parquet."""
        return export_document(self.results(study_id), path, fmt)

    # ------------------------------------------------------------------ AdminApi

    def list_nodes(self) -> builtins.list[NodeInfo]:
        request = admin_api_pb2.ListNodesRequest()
        response = self._call(
            lambda: self._admin.ListNodes(request, timeout=self.timeout, metadata=self._metadata),
            "list nodes",
        )
        return [serde.decode_node_info(pb) for pb in response.nodes]

    def revoke_node(self, name: str, reason: str) -> NodeInfo:
        request = admin_api_pb2.RevokeNodeRequest(name=name, reason=reason)
        response = self._call(
            lambda: self._admin.RevokeNode(request, timeout=self.timeout, metadata=self._metadata),
            f"revoke node {name}",
        )
        return serde.decode_node_info(response.node)

    # ------------------------------------------------------------------ PermitApi

    def register_permit(self, document: bytes) -> PermitInfo:
        """Register a signed permit document (as the HDAB issued it). Registering the same
        permit again returns it; `StudyRejectedError` names the refusal code (e.g.
        ``permit.expired``), `ConflictError` another document under a registered id."""
        request = permit_api_pb2.RegisterPermitRequest(document=document)
        response = self._call(
            lambda: self._permits.Register(request, timeout=self.timeout, metadata=self._metadata),
            "register permit",
        )
        return serde.decode_permit(response.permit)

    def list_permits(self) -> builtins.list[PermitInfo]:
        """The permits the caller holds (operators and auditors: every permit), by id."""
        request = permit_api_pb2.ListPermitsRequest()
        response = self._call(
            lambda: self._permits.List(request, timeout=self.timeout, metadata=self._metadata),
            "list permits",
        )
        return [serde.decode_permit(pb) for pb in response.permits]

    def get_permit(self, permit_id: str) -> PermitInfo:
        request = permit_api_pb2.GetPermitRequest(permit_id=permit_id)
        response = self._call(
            lambda: self._permits.Get(request, timeout=self.timeout, metadata=self._metadata),
            f"get permit {permit_id}",
        )
        return serde.decode_permit(response.permit)

    # ------------------------------------------------------------------ AuditApi

    def export_audit(self, since: datetime | None = None, after_seq: int = 0) -> Iterator[bytes]:
        """The coordinator's audit chain (auditors only): each entry's canonical line as
        stored, in order, from the first entry at or after ``since`` (and after
        ``after_seq``). Check it with `ehds.audit.verify_lines`: the lines prove themselves,
        the coordinator need not be trusted."""
        request = audit_api_pb2.ExportAuditRequest(after_seq=after_seq)
        if since is not None:
            request.since.CopyFrom(serde.encode_timestamp(since))
        operation = "export the audit chain"
        stream = self._audit.Export(
            request, timeout=max(self.timeout, AUDIT_EXPORT_TIMEOUT), metadata=self._metadata
        )
        try:
            for batch in stream:
                yield from batch.entries
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, address=self.address, operation=operation) from None
        finally:
            stream.cancel()

    # ------------------------------------------------------------------ internals

    def _call(self, call: Callable[[], _T], operation: str) -> _T:
        try:
            return call()
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, address=self.address, operation=operation) from None

    def _snapshots(
        self,
        study_id: str,
        deadline: float | None,
        unavailable_grace: float | None,
        progress: ProgressCallback | None,
    ) -> Iterator[Study]:
        """Snapshots from as many Watch streams as it takes to see the study end."""
        operation = f"watch study {study_id}"
        request = study_api_pb2.WatchStudyRequest(study_id=study_id)
        last: Study | None = None
        unavailable_since: float | None = None
        attempt = 0
        while True:
            stream_timeout = WATCH_STREAM_SECONDS
            if deadline is not None:
                stream_timeout = min(stream_timeout, deadline - time.monotonic())
                if stream_timeout <= 0:
                    raise _wait_timeout(study_id, last)
            stream = self._studies.Watch(request, timeout=stream_timeout, metadata=self._metadata)
            try:
                for event in stream:
                    unavailable_since, attempt = None, 0
                    study = serde.decode_study(event.study)
                    if study != last:
                        last = study
                        if progress is not None:
                            progress(study)
                        yield study
                    if study.state.is_final:
                        return
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, address=self.address, operation=operation)
                if not isinstance(error, CoordinatorUnavailableError):
                    raise error from None
                if status_of(exc)[0] is grpc.StatusCode.UNAVAILABLE:
                    now = time.monotonic()
                    unavailable_since = unavailable_since or now
                    if (
                        unavailable_grace is not None
                        and now - unavailable_since > unavailable_grace
                    ):
                        raise error from None
                    pause = _pause(attempt)
                    attempt += 1
                    if deadline is not None:
                        pause = max(0.0, min(pause, deadline - time.monotonic()))
                    time.sleep(pause)
                    continue
                # DEADLINE_EXCEEDED: this stream's own deadline; the loop opens the next one.
                continue
            finally:
                stream.cancel()
            # The stream ended cleanly before the study did (e.g. the coordinator shutting
            # down): pause before re-opening it, so that a peer doing this cannot spin us.
            time.sleep(_pause(attempt))
            attempt += 1


def _identity_in(config: ClientConfig) -> str:
    """``ROLE/NAME`` of the configured certificate, for ``--insecure``."""
    if not isinstance(config.tls, TlsFiles):
        raise InputError(
            "--insecure: no certificate configured; give insecure_identity as ROLE/NAME"
        )
    certificate = config.tls.certificate
    try:
        identity = Identity.from_certificate(certificate.read_bytes())
    except (OSError, CertificateError) as exc:
        raise InputError(
            f"--insecure: cannot take the identity from {certificate} ({exc}); "
            "give insecure_identity as ROLE/NAME"
        ) from None
    return f"{identity.role.value}/{identity.name}"


def _pause(attempt: int) -> float:
    return RETRY_PAUSE_SECONDS[min(attempt, len(RETRY_PAUSE_SECONDS) - 1)]


def _wait_timeout(study_id: str, last: Study | None) -> StudyWaitTimeoutError:
    state = last.state.name if last is not None else "unknown"
    return StudyWaitTimeoutError(
        f"study {study_id} has not ended in the time allowed (last state {state}); "
        "it goes on at the coordinator"
    )


# ------------------------------------------------------------------ exports


def document_table(document: dict[str, Any]) -> pa.Table:
    """A result document as one table, first column ``result_id`` (the study id).

    Summarised results (`ehds.analyses.results`): every row of every node and of the pool.
    Other analyses: the pooled table their `Analysis.table` draws (a JSON column for an
    analysis this client does not know, e.g. one newer than it).
    """
    import pyarrow as pa  # noqa: PLC0415 - pyarrow only for exports

    from ehds.analyses.results import document_rows, is_summarised, to_arrow  # noqa: PLC0415

    result_id = str(document.get("study_id", ""))
    if is_summarised(document.get("pooled")):
        return to_arrow(document_rows(document), result_id=result_id)
    header, rows = _analysis_table(document)
    columns: dict[str, list[Any]] = {"result_id": [result_id] * len(rows)}
    for index, name in enumerate(header):
        columns[name] = [row[index] for row in rows]
    return pa.table(columns)


def export_document(document: dict[str, Any], path: str | Path, fmt: ExportFormat) -> Path:
    """Write `document_table` to ``path`` as ``json`` (an array of row objects), ``csv`` or
    ``parquet``; returns the path."""
    from ehds.analyses.results import document_rows, is_summarised, write  # noqa: PLC0415

    if fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {fmt!r} (json, csv or parquet)")
    target = Path(path)
    if is_summarised(document.get("pooled")):
        return write(
            document_rows(document), target, fmt, result_id=str(document.get("study_id", ""))
        )
    table = document_table(document)
    if fmt == "parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415

        pq.write_table(table, target)
    elif fmt == "csv":
        import pyarrow.csv as pa_csv  # noqa: PLC0415

        pa_csv.write_csv(table, target)
    else:
        text = json.dumps(table.to_pylist(), indent=1, ensure_ascii=False) + "\n"
        target.write_text(text, encoding="utf-8")
    return target


def _analysis_table(document: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    from ehds.analyses.registry import default_registry  # noqa: PLC0415
    from ehds.federation.model import AnalysisRef  # noqa: PLC0415

    pooled = document.get("pooled") or {}
    analysis = document.get("analysis") or {}
    try:
        ref = AnalysisRef(str(analysis.get("name", "")), str(analysis.get("version", "")))
        return default_registry().get(ref).table(pooled)
    except InputError:
        return ["result"], [[json.dumps(pooled, sort_keys=True)]]
