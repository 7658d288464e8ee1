"""The PKI directory: where each file lives, atomic writes and the operation lock.

    PKI_DIR/
      ca.pem        federation CA certificate (the trust anchor every party receives)
      ca.key        CA private key (0600; never leaves this directory)
      crl.pem       certificate revocation list signed by the CA
      index.json    every certificate issued: name, role, serial, not_after, revoked
      issued/       default output folder of ``ehds pki issue``: NAME.key, NAME.pem, ca.pem
      .lock         held while a command changes the directory

Files are written to a temporary file in the same folder, flushed, then moved in place:
a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ehds.pki.errors import PkiStateError

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


@dataclass(frozen=True)
class PkiDirectory:
    root: Path

    @property
    def ca_certificate(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"

    @property
    def index(self) -> Path:
        return self.root / "index.json"

    @property
    def issued(self) -> Path:
        return self.root / "issued"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    def pki_files(self) -> tuple[Path, ...]:
        return (self.ca_certificate, self.ca_key, self.crl, self.index)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock; a second command fails at once instead of waiting."""
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
        except (FileNotFoundError, NotADirectoryError):
            raise PkiStateError(
                f"{self.root}: no PKI directory (run `ehds pki init --dir {self.root}`)"
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PkiStateError(
                    f"{self.root}: another ehds pki command is changing this directory"
                ) from None
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _write_temporary(path: Path, data: bytes, mode: int) -> Path:
    """A new file beside ``path`` holding ``data``, flushed to disk, with exactly ``mode``.

    ``mkstemp`` creates it 0600, so a private key is never readable by others, not even
    while it is being written.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_replace(path: Path, data: bytes, mode: int = PUBLIC_MODE) -> None:
    """Write ``path`` atomically, replacing a previous version."""
    tmp = _write_temporary(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_new(path: Path, data: bytes, mode: int = PUBLIC_MODE) -> None:
    """Write ``path`` atomically; :class:`PkiStateError` if it exists (never overwritten)."""
    tmp = _write_temporary(path, data, mode)
    try:
        os.link(tmp, path)  # fails if path exists, unlike os.replace
    except FileExistsError:
        raise PkiStateError(f"{path} exists; refusing to overwrite it") from None
    finally:
        tmp.unlink(missing_ok=True)
