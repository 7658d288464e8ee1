"""``ehds admin ...``: the federation operator's view of the nodes.

    ehds admin [--config operator.yaml] nodes
    ehds admin [--config operator.yaml] revoke NAME --reason TEXT

The configuration has the shape of ``researcher.yaml`` with an ``operator`` certificate (the
coordinator serves AdminApi to that role only); it comes from ``--config`` or the
``EHDS_OPERATOR_CONFIG`` environment variable. Revoking here shuts the node out at the
coordinator at once; `ehds pki revoke` is what makes the certificate itself invalid everywhere.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from ehds.cli.study_commands import (
    add_client_options,
    add_command_client_options,
    format_table,
    format_time,
    open_client,
)

if TYPE_CHECKING:
    from ehds.federation.model import NodeInfo

CONFIG_ENV: Final = "EHDS_OPERATOR_CONFIG"

NODE_HEADER: Final = (
    "name",
    "connected",
    "last seen",
    "protocol",
    "software",
    "cdm",
    "vocabulary",
    "engine",
    "revoked",
    "capabilities",
)


def node_row(node: NodeInfo) -> list[Any]:
    profile = node.profile
    return [
        node.name,
        node.connected,
        format_time(node.last_seen),
        str(node.protocol_version) if node.protocol_version is not None else None,
        f"{profile.software.name} {profile.software.version}" if profile else None,
        profile.cdm_version if profile else None,
        profile.vocabulary_version if profile else None,
        profile.engine if profile else None,
        node.revoked,
        ", ".join(str(ref) for ref in profile.capabilities) if profile else None,
    ]


def render_nodes(nodes: Sequence[NodeInfo]) -> str:
    if not nodes:
        return "(no node has connected yet)"
    return format_table(NODE_HEADER, [node_row(node) for node in nodes])


def _nodes(args: argparse.Namespace) -> int:
    with open_client(args, CONFIG_ENV) as client:
        print(render_nodes(client.list_nodes()), flush=True)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with open_client(args, CONFIG_ENV) as client:
        node = client.revoke_node(args.name, args.reason)
    state = "revoked" if node.revoked else "NOT revoked"
    print(f"node {node.name}: {state} (connected: {'yes' if node.connected else 'no'})")
    return 0 if node.revoked else 1


def register(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = areas.add_parser("admin", help="operators: list nodes, revoke a node")
    add_client_options(admin, CONFIG_ENV, "operator.yaml")
    commands = admin.add_subparsers(dest="command", required=True, metavar="COMMAND")

    nodes = commands.add_parser(
        "nodes", help="every node: connection, versions, capabilities, revocation"
    )
    nodes.set_defaults(handler=_nodes)

    revoke = commands.add_parser("revoke", help="shut a node out of the federation now")
    revoke.add_argument("name")
    revoke.add_argument("--reason", required=True, help="why (kept in the audit log)")
    revoke.set_defaults(handler=_revoke)

    for command in (nodes, revoke):
        add_command_client_options(command)
