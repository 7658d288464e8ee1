"""AdminApi: the federation's operators list nodes and shut one out."""

from __future__ import annotations

from typing import Any, Final

import grpc

from ehds.coordinator.dispatch import Dispatcher
from ehds.coordinator.errors import NodeNotFoundError
from ehds.coordinator.service.access import Access, abort_for, guarded
from ehds.federation import serde
from ehds.federation.v1 import admin_api_pb2, admin_api_pb2_grpc
from ehds.pki.identity import NAME_PATTERN, Role

__all__ = ["AdminApiService"]

_SERVICE: Final = "AdminApi"
MAX_REASON_CHARS: Final = 500

Context = grpc.aio.ServicerContext[Any, Any]


class AdminApiService(admin_api_pb2_grpc.AdminApiServicer):
    def __init__(self, dispatcher: Dispatcher, access: Access) -> None:
        self._dispatcher = dispatcher
        self._access = access

    async def ListNodes(  # noqa: N802
        self, request: admin_api_pb2.ListNodesRequest, context: Context
    ) -> admin_api_pb2.ListNodesResponse:
        await self._access.require(context, Role.OPERATOR, _SERVICE)
        nodes = await guarded(context, self._dispatcher.list_nodes())
        return admin_api_pb2.ListNodesResponse(nodes=[serde.encode_node_info(n) for n in nodes])

    async def RevokeNode(  # noqa: N802
        self, request: admin_api_pb2.RevokeNodeRequest, context: Context
    ) -> admin_api_pb2.RevokeNodeResponse:
        operator, _ = await self._access.require(context, Role.OPERATOR, _SERVICE)
        if not NAME_PATTERN.fullmatch(request.name):
            await abort_for(context, NodeNotFoundError(request.name))
        node = await guarded(
            context,
            self._dispatcher.revoke_node(
                operator.name, request.name, request.reason[:MAX_REASON_CHARS]
            ),
        )
        return admin_api_pb2.RevokeNodeResponse(node=serde.encode_node_info(node))
