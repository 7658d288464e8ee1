"""Signature checks of a long chain, in batches on a few threads.

Checking an ECDSA P-256 signature costs ~65 µs, several times the rest of an entry's checks,
so a 100k-entry chain would spend most of its verification time here. OpenSSL releases the GIL
while it verifies, so batches run on threads in parallel with the (sequential) chain checks.
Only the FIRST failure (in reading order) matters; the number of batches in flight is bounded
so that memory stays flat and a failure found early stops the scan early.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

from ehds.core.signing import verify_signature

BATCH_SIZE: Final = 256
MAX_WORKERS: Final = 8


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """One entry's signature: ``sig`` by the key ``key`` over ``body``.

    ``line`` orders the checks (the first failure is the one read first); ``seq`` and ``prev``
    are for the report.
    """

    line: int
    seq: int
    key: str
    body: bytes
    sig: str
    prev: str


def _check(
    keys: Mapping[str, EllipticCurvePublicKey], batch: Sequence[SignatureCheck]
) -> tuple[int, SignatureCheck | None]:
    """(signatures checked, the first that failed or None)."""
    for index, item in enumerate(batch):
        if not verify_signature(keys[item.key], item.body, item.sig):
            return index + 1, item
    return len(batch), None


class SignatureBatches:
    """Collects checks, runs them in batches; :meth:`finish` gives the first failure read."""

    def __init__(
        self, keys: Mapping[str, EllipticCurvePublicKey], workers: int | None = None
    ) -> None:
        self._keys = keys
        self._workers = workers or min(MAX_WORKERS, os.cpu_count() or 1)
        self._batch: list[SignatureCheck] = []
        self._pending: deque[Future[tuple[int, SignatureCheck | None]]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self.failure: SignatureCheck | None = None
        self.checked = 0

    def __enter__(self) -> SignatureBatches:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def add(self, check: SignatureCheck) -> bool:
        """Queue one check; False once a failure is known (the caller may stop reading)."""
        self._batch.append(check)
        if len(self._batch) >= BATCH_SIZE:
            self._submit()
        return self.failure is None

    def finish(self) -> SignatureCheck | None:
        """Run what is left, wait for every batch; the failure read first, if any."""
        if self._batch:
            if self._pool is None:
                self._record(_check(self._keys, self._batch))
                self._batch = []
            else:
                self._submit()
        while self._pending:
            self._record(self._pending.popleft().result())
        return self.failure

    def _submit(self) -> None:
        batch, self._batch = self._batch, []
        if self._workers <= 1:
            self._record(_check(self._keys, batch))
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="audit-verify")
        self._pending.append(self._pool.submit(_check, self._keys, batch))
        while len(self._pending) > 2 * self._workers:
            self._record(self._pending.popleft().result())

    def _record(self, outcome: tuple[int, SignatureCheck | None]) -> None:
        checked, failed = outcome
        self.checked += checked
        if failed is not None and (self.failure is None or failed.line < self.failure.line):
            self.failure = failed
