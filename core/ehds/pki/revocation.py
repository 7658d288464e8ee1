"""Revoking certificates, and checking revocation where TLS cannot.

gRPC (grpcio) does not check CRLs during the handshake: a revoked certificate still
completes mutual TLS. The coordinator therefore checks the peer certificate against a
:class:`RevocationList` on the first call of a connection, and calls :meth:`reload` when
``crl.pem`` changes (``ehds pki revoke`` re-signs it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ehds.pki.authority import load_authority, verify_issued_by
from ehds.pki.directory import PkiDirectory
from ehds.pki.errors import PkiStateError, UntrustedCrlError
from ehds.pki.identity import validate_name
from ehds.pki.index import CertificateIndex, IssuedCertificate, format_time
from ehds.pki.pem import CertificateLike, as_certificate, read_file


def revoke_certificate(
    pki_dir: Path, name: str, *, now: datetime | None = None
) -> tuple[IssuedCertificate, ...]:
    """Revoke every not yet revoked certificate of ``name`` and re-sign ``crl.pem``.

    Returns the records now revoked; :class:`PkiStateError` if there are none.
    """
    validate_name(name)
    now = now or datetime.now(UTC)
    directory = PkiDirectory(pki_dir)
    with directory.locked():
        authority = load_authority(pki_dir)
        index = CertificateIndex.load(directory.index)
        index, serials = index.with_revoked(name, now)
        if not serials:
            known = any(record.name == name for record in index.certificates)
            state = "all its certificates are already revoked" if known else "never issued"
            raise PkiStateError(f"nothing to revoke for {name!r}: {state}")
        index = CertificateIndex(index.crl_number + 1, index.certificates)
        # The index first: it is the source of truth, `ehds pki crl` re-signs from it.
        index.save(directory.index)
        authority.write_crl(index, now)
        return tuple(record for record in index.certificates if record.serial in serials)


def refresh_crl(pki_dir: Path, *, now: datetime | None = None) -> x509.CertificateRevocationList:
    """Re-sign ``crl.pem`` from the index with a new number and a new next-update time."""
    now = now or datetime.now(UTC)
    directory = PkiDirectory(pki_dir)
    with directory.locked():
        authority = load_authority(pki_dir)
        index = CertificateIndex.load(directory.index)
        index = CertificateIndex(index.crl_number + 1, index.certificates)
        index.save(directory.index)
        return authority.write_crl(index, now)


@dataclass(frozen=True)
class _Snapshot:
    crl: x509.CertificateRevocationList
    serials: frozenset[int]


def _read_verified_crl(path: Path, ca: x509.Certificate, now: datetime) -> _Snapshot:
    try:
        crl = x509.load_pem_x509_crl(read_file(path))
    except ValueError as exc:
        raise UntrustedCrlError(f"{path}: not a PEM X.509 CRL ({exc})") from None
    public_key = ca.public_key()
    if (
        crl.issuer != ca.subject
        or not isinstance(public_key, ec.EllipticCurvePublicKey)
        or not crl.is_signature_valid(public_key)
    ):
        raise UntrustedCrlError(
            f"{path}: CRL not signed by the federation CA {ca.subject.rfc4514_string()!r}"
        )
    next_update = crl.next_update_utc
    if next_update is None or now >= next_update:
        expiry = (
            "has no next update" if next_update is None else f"expired {format_time(next_update)}"
        )
        raise UntrustedCrlError(f"{path}: CRL {expiry}; re-sign it with `ehds pki crl`")
    return _Snapshot(crl, frozenset(entry.serial_number for entry in crl))


class RevocationList:
    """The federation CRL, verified against the CA certificate the caller trusts.

    Loading refuses a CRL that the CA did not sign or whose next update has passed
    (:class:`UntrustedCrlError`). :meth:`reload` swaps in a newer CRL atomically; if the new
    file is refused, the list keeps the CRL it had and the error propagates.
    """

    def __init__(self, path: Path, ca_certificate: x509.Certificate, snapshot: _Snapshot) -> None:
        self._path = path
        self._ca = ca_certificate
        self._snapshot = snapshot

    @classmethod
    def load(
        cls, source: Path, ca_certificate: CertificateLike, *, now: datetime | None = None
    ) -> RevocationList:
        """``source`` is a PKI directory (its ``crl.pem`` is read) or a CRL file."""
        path = PkiDirectory(source).crl if source.is_dir() else source
        ca = as_certificate(ca_certificate)
        return cls(path, ca, _read_verified_crl(path, ca, now or datetime.now(UTC)))

    def reload(self, *, now: datetime | None = None) -> None:
        self._snapshot = _read_verified_crl(self._path, self._ca, now or datetime.now(UTC))

    @property
    def path(self) -> Path:
        return self._path

    @property
    def number(self) -> int | None:
        try:
            return self._snapshot.crl.extensions.get_extension_for_class(
                x509.CRLNumber
            ).value.crl_number
        except x509.ExtensionNotFound:
            return None

    @property
    def next_update(self) -> datetime | None:
        return self._snapshot.crl.next_update_utc

    @property
    def revoked_serials(self) -> frozenset[int]:
        return self._snapshot.serials

    def is_revoked(self, certificate: CertificateLike) -> bool:
        """Whether the CRL lists ``certificate``'s serial.

        :class:`~ehds.pki.errors.UntrustedCertificateError` for a certificate the federation
        CA did not issue: serials only mean something within one CA.
        """
        cert = as_certificate(certificate)
        verify_issued_by(cert, self._ca)
        return cert.serial_number in self._snapshot.serials
