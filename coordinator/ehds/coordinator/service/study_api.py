"""StudyApi: researchers submit, follow and fetch studies. A researcher sees the studies of the
data permits they hold (and the ones they submitted): NOT_FOUND for the others, as for a study
that does not exist. Operators and auditors may Get, List and Watch every study (read-only);
Submit, Cancel and GetResults are for researchers only."""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc

from ehds.coordinator.dispatch import Dispatcher
from ehds.coordinator.errors import InvalidPageTokenError, InvalidStudyError
from ehds.coordinator.result_document import CONTENT_TYPE
from ehds.coordinator.service.access import Access, abort_for, guarded
from ehds.coordinator.state.transitions import Viewer
from ehds.federation import serde
from ehds.federation.chunks import split_payload
from ehds.federation.v1 import study_api_pb2, study_api_pb2_grpc
from ehds.pki.identity import Role

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "StudyApiService"]

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 200
_TOKEN_PREFIX: Final = "after:"  # noqa: S105 (not a password)
_SERVICE: Final = "StudyApi"
_READERS: Final = (Role.RESEARCHER, Role.OPERATOR, Role.AUDITOR)

Context = grpc.aio.ServicerContext[Any, Any]


def encode_page_token(after: int) -> str:
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{after}".encode()).decode()


def decode_page_token(token: str) -> int | None:
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(_TOKEN_PREFIX) or not text[len(_TOKEN_PREFIX) :].isdigit():
        raise InvalidPageTokenError("page_token: not a token from a previous List")
    return int(text[len(_TOKEN_PREFIX) :])


class StudyApiService(study_api_pb2_grpc.StudyApiServicer):
    def __init__(self, dispatcher: Dispatcher, access: Access) -> None:
        self._dispatcher = dispatcher
        self._access = access

    async def _researcher(self, context: Context) -> str:
        identity, _ = await self._access.require(context, Role.RESEARCHER, _SERVICE)
        return identity.name

    async def _viewer(self, context: Context) -> Viewer:
        """A researcher's name (they see the studies of their permits), None for an operator
        or an auditor (they see every study)."""
        identity, _ = await self._access.require(context, _READERS, _SERVICE)
        return identity.name if identity.role is Role.RESEARCHER else None

    async def Submit(  # noqa: N802
        self, request: study_api_pb2.SubmitStudyRequest, context: Context
    ) -> study_api_pb2.SubmitStudyResponse:
        submitter = await self._researcher(context)
        if not request.HasField("spec"):
            await abort_for(context, InvalidStudyError("spec: is not set"))
        try:
            spec = serde.decode_study_spec(request.spec, "spec")
        except serde.ProtocolViolation as exc:
            await abort_for(context, InvalidStudyError(f"{exc.field}: is not set"))
        study = await guarded(context, self._dispatcher.submit(submitter, spec, request.request_id))
        return study_api_pb2.SubmitStudyResponse(study=serde.encode_study(study))

    async def Get(  # noqa: N802
        self, request: study_api_pb2.GetStudyRequest, context: Context
    ) -> study_api_pb2.GetStudyResponse:
        viewer = await self._viewer(context)
        study = await guarded(context, self._dispatcher.get(viewer, request.study_id))
        return study_api_pb2.GetStudyResponse(study=serde.encode_study(study))

    async def List(  # noqa: N802
        self, request: study_api_pb2.ListStudiesRequest, context: Context
    ) -> study_api_pb2.ListStudiesResponse:
        viewer = await self._viewer(context)
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        try:
            after = decode_page_token(request.page_token)
        except InvalidPageTokenError as exc:
            await abort_for(context, exc)
        page = await guarded(context, self._dispatcher.list_studies(viewer, size, after))
        return study_api_pb2.ListStudiesResponse(
            studies=[serde.encode_study(study) for study in page.studies],
            next_page_token=encode_page_token(page.next_after)
            if page.next_after is not None
            else "",
        )

    async def Cancel(  # noqa: N802
        self, request: study_api_pb2.CancelStudyRequest, context: Context
    ) -> study_api_pb2.CancelStudyResponse:
        submitter = await self._researcher(context)
        study = await guarded(
            context, self._dispatcher.cancel(submitter, request.study_id, request.reason[:500])
        )
        return study_api_pb2.CancelStudyResponse(study=serde.encode_study(study))

    async def Watch(  # noqa: N802
        self, request: study_api_pb2.WatchStudyRequest, context: Context
    ) -> AsyncIterator[study_api_pb2.StudyEvent]:
        viewer = await self._viewer(context)
        studies = aiter(self._dispatcher.watch(viewer, request.study_id))
        while True:
            try:
                study = await anext(studies)
            except StopAsyncIteration:
                return
            except Exception as exc:
                await abort_for(context, exc)
            yield study_api_pb2.StudyEvent(study=serde.encode_study(study))

    async def GetResults(  # noqa: N802
        self, request: study_api_pb2.GetStudyResultsRequest, context: Context
    ) -> AsyncIterator[study_api_pb2.StudyResultsChunk]:
        submitter = await self._researcher(context)
        document = await guarded(context, self._dispatcher.results(submitter, request.study_id))
        for chunk in split_payload(document, CONTENT_TYPE):
            yield study_api_pb2.StudyResultsChunk(
                study_id=request.study_id, chunk=serde.encode_chunk(chunk)
            )
