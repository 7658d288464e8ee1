"""Certificate revocation, checked by the coordinator itself.

grpcio completes the mutual TLS handshake with a revoked certificate (it has no CRL support), so
every call's peer certificate is checked here, on the call, against the federation CRL, and the
CRL is re-read when its file changes (`ehds pki revoke` re-signs it). When a new CRL revokes a
node that has a stream open, the coordinator closes that stream at once (`on_change`).

Revoking a certificate is not revoking a node: a node re-issued a certificate after a key
compromise comes back under the same name. `AdminApi.RevokeNode` shuts the NAME out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ehds.core.errors import EhdsError
from ehds.pki.revocation import RevocationList

__all__ = ["RevocationChecker"]

log = logging.getLogger(__name__)

_CACHE_LIMIT: Final = 10_000


class RevocationChecker:
    """The CRL in force, with a cache of verdicts per certificate (cleared on reload)."""

    def __init__(
        self,
        crl_path: Path | None,
        ca_pem: bytes,
        *,
        check_interval_seconds: float,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._path = crl_path
        self._ca_pem = ca_pem
        self._interval = check_interval_seconds
        self._on_change = on_change
        self._list: RevocationList | None = None
        self._stamp: tuple[int, int] | None = None
        self._verdicts: dict[bytes, bool] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._path is not None

    def load(self) -> None:
        """Read the CRL at start: a CRL that cannot be trusted stops the coordinator (raises)."""
        if self._path is None:
            log.warning(
                "no revocation.crl configured: revoked certificates are NOT refused "
                "(only nodes revoked with `ehds admin revoke` are)"
            )
            return
        self._stamp = self._file_stamp()
        self._list = RevocationList.load(self._path, self._ca_pem)
        self._verdicts.clear()

    def _file_stamp(self) -> tuple[int, int] | None:
        assert self._path is not None
        try:
            stat = os.stat(self._path if not self._path.is_dir() else self._path / "crl.pem")
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    @property
    def revoked_serials(self) -> frozenset[int]:
        """Serials the CRL in force lists (empty without a CRL)."""
        return self._list.revoked_serials if self._list is not None else frozenset()

    def is_revoked(self, certificate_pem: bytes) -> bool:
        """Whether the CRL lists the certificate; False when no CRL is configured."""
        if self._list is None:
            return False
        verdict = self._verdicts.get(certificate_pem)
        if verdict is None:
            try:
                verdict = self._list.is_revoked(certificate_pem)
            except EhdsError:
                # Not issued by the federation CA: the handshake would have refused it; refuse.
                verdict = True
            if len(self._verdicts) >= _CACHE_LIMIT:
                self._verdicts.clear()
            self._verdicts[certificate_pem] = verdict
        return verdict

    async def reload_if_changed(self) -> bool:
        """Re-read the CRL if its file changed; True if a new CRL is in force."""
        if self._list is None or self._path is None:
            return False
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return False
        current = self._list
        try:
            await asyncio.to_thread(current.reload)
        except EhdsError as exc:
            # Keep the CRL in force; retry at the next change of the file.
            log.error("the new CRL %s is refused, keeping the previous one: %s", self._path, exc)
            self._stamp = stamp
            return False
        self._stamp = stamp
        self._verdicts.clear()
        log.info("CRL %s reloaded (%d revoked)", self._path, len(current.revoked_serials))
        self._on_change()
        return True

    def start(self) -> None:
        if self._list is not None and self._task is None:
            self._task = asyncio.create_task(self._watch(), name="coordinator-crl-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.reload_if_changed()
            except Exception:
                log.exception("checking the CRL failed")
