"""PermitApi: the register of data permits. A researcher registers a permit they hold (an
operator any permit); a researcher lists and reads the permits they hold, operators and
auditors every permit. The document is checked against the HDAB keys the coordinator trusts."""

from __future__ import annotations

from typing import Any, Final

import grpc

from ehds.coordinator.errors import PermitNotFoundError
from ehds.coordinator.governance import Governance
from ehds.coordinator.service.access import Access, abort_for, guarded
from ehds.federation import serde
from ehds.federation.v1 import permit_api_pb2, permit_api_pb2_grpc
from ehds.permits.model import ID_PATTERN
from ehds.pki.identity import Role

__all__ = ["PermitApiService"]

_SERVICE: Final = "PermitApi"
_REGISTRARS: Final = (Role.RESEARCHER, Role.OPERATOR)
_READERS: Final = (Role.RESEARCHER, Role.OPERATOR, Role.AUDITOR)

Context = grpc.aio.ServicerContext[Any, Any]


class PermitApiService(permit_api_pb2_grpc.PermitApiServicer):
    def __init__(self, governance: Governance, access: Access) -> None:
        self._governance = governance
        self._access = access

    async def _viewer(self, context: Context) -> str | None:
        identity, _ = await self._access.require(context, _READERS, _SERVICE)
        return identity.name if identity.role is Role.RESEARCHER else None

    async def Register(  # noqa: N802
        self, request: permit_api_pb2.RegisterPermitRequest, context: Context
    ) -> permit_api_pb2.RegisterPermitResponse:
        registrar, _ = await self._access.require(context, _REGISTRARS, _SERVICE)
        info = await guarded(
            context, self._governance.register_permit(registrar, bytes(request.document))
        )
        return permit_api_pb2.RegisterPermitResponse(permit=serde.encode_permit(info))

    async def List(  # noqa: N802
        self, request: permit_api_pb2.ListPermitsRequest, context: Context
    ) -> permit_api_pb2.ListPermitsResponse:
        viewer = await self._viewer(context)
        permits = await guarded(context, self._governance.list_permits(viewer))
        return permit_api_pb2.ListPermitsResponse(
            permits=[serde.encode_permit(info) for info in permits]
        )

    async def Get(  # noqa: N802
        self, request: permit_api_pb2.GetPermitRequest, context: Context
    ) -> permit_api_pb2.GetPermitResponse:
        viewer = await self._viewer(context)
        if not ID_PATTERN.fullmatch(request.permit_id):
            await abort_for(context, PermitNotFoundError(request.permit_id[:100]))
        info = await guarded(context, self._governance.get_permit(viewer, request.permit_id))
        return permit_api_pb2.GetPermitResponse(permit=serde.encode_permit(info))
