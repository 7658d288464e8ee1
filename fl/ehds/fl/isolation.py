"""Cut a Flower ClientApp worker off the network before any researcher code is loaded.

Two layers. The kernel one: the worker moves into a fresh network namespace, which has no
interface but a loopback that is down, so no socket can reach the node's own services, the
host or the internet, whatever code opens it (C extensions, ctypes, child processes). It needs
CAP_SYS_ADMIN or an unprivileged user namespace, which our containers usually cannot have (uid
10001, every capability dropped, the RuntimeDefault seccomp profile): there the worker reports
"audit", and the Python layer and the pod's NetworkPolicy remain. The Python one:
an audit hook that refuses name resolution and every connect/bind/sendto/sendmsg on any
socket, Unix ones included (a network namespace does not hide the host's filesystem sockets,
such as a database's); it stays when the namespace could not be made and backs it up when it
could (a hook cannot be removed once added). Anonymous socket pairs (asyncio's self-pipe)
still work: they are neither bound nor connected.

Both must run while the process is still single-threaded: ``unshare`` moves only the calling
thread, and a user namespace cannot be made by a multi-threaded process.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Mapping
from typing import Any

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

_REFUSED_SOCKET_CALLS = frozenset(
    {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"}
)
_REFUSED_ALWAYS = frozenset(
    {
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "socket.getnameinfo",
    }
)
_hook_installed = False


class NetworkRefusedError(PermissionError):
    """Raised by the audit hook for a network operation in an isolated worker."""


def _unshare(flags: int) -> int:
    """0 on success, else the errno of unshare(2)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        unshare = libc.unshare
    except (OSError, AttributeError):
        return errno.ENOSYS
    unshare.argtypes = [ctypes.c_int]
    unshare.restype = ctypes.c_int
    if unshare(flags) == 0:
        return 0
    return ctypes.get_errno() or errno.EPERM


def _map_own_ids(uid: int, gid: int) -> None:
    """Keep our own uid/gid inside a new user namespace (best effort)."""
    for path, content in (
        ("/proc/self/setgroups", "deny"),
        ("/proc/self/uid_map", f"{uid} {uid} 1"),
        ("/proc/self/gid_map", f"{gid} {gid} 1"),
    ):
        try:
            with open(path, "w", encoding="ascii") as handle:
                handle.write(content)
        except OSError:
            return


def unshare_network() -> bool:
    """Move this process into a new, empty network namespace; False when refused."""
    if not sys.platform.startswith("linux"):
        return False
    if _unshare(CLONE_NEWNET) == 0:
        return True
    uid, gid = os.getuid(), os.getgid()
    if _unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        _map_own_ids(uid, gid)
        return True
    return False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in _REFUSED_ALWAYS:
        raise NetworkRefusedError("network access is disabled in the federated learning worker")
    if event in _REFUSED_SOCKET_CALLS:
        raise NetworkRefusedError("network access is disabled in the federated learning worker")


def install_network_audit_hook() -> None:
    """Refuse name resolution and socket connect/bind/send for the rest of the process."""
    global _hook_installed  # noqa: PLW0603 - one hook per process, it cannot be removed
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True


def isolate() -> str:
    """Apply both layers; "netns+audit" or "audit" (the namespace was refused)."""
    in_namespace = unshare_network()
    install_network_audit_hook()
    return "netns+audit" if in_namespace else "audit"


# What a Flower host process inherits from the environment: enough to run Python, nothing that
# could carry the parent's secrets (database URLs, key passphrases, tokens).
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "PYTHONPATH", "TZ")


def host_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for a ServerApp / ClientApp host process, Flower's phoning off."""
    env = {key: os.environ[key] for key in _INHERITED_ENV if key in os.environ}
    env.update(
        {
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
        }
    )
    if extra:
        env.update(extra)
    return env
