"""The federation PKI: one CA per federation, certificates for its participants, a CRL.

The coordinator and the hospital nodes talk gRPC over mutual TLS. Every participant holds a
P-256 key and a certificate signed by the federation CA whose subject names it
(``CN=<name>``) and its role (``OU=node|coordinator|researcher|operator``); the coordinator derives
identity and role from the peer certificate (:class:`Identity`), never from message contents,
and checks revocation itself (:class:`RevocationList`) because gRPC does not.

    authority.py   create and load the CA, sign certificates and CRLs, verify_issued_by
    issue.py       issue a participant certificate, load_credentials for gRPC
    revocation.py  revoke, re-sign the CRL, RevocationList
    identity.py    Role, names, Identity.from_certificate
    index.py       index.json: the certificates issued
    directory.py   the PKI directory's files, atomic writes, the lock
    errors.py      the errors raised (all ehds.core.errors.EhdsError)
"""

from __future__ import annotations

from ehds.pki.authority import (
    CertificateAuthority,
    init_authority,
    load_authority,
    load_ca_certificate,
    verify_issued_by,
)
from ehds.pki.errors import (
    CertificateError,
    IdentityError,
    PkiInputError,
    PkiStateError,
    UntrustedCertificateError,
    UntrustedCrlError,
)
from ehds.pki.identity import Identity, Role, validate_name
from ehds.pki.index import CertificateIndex, IssuedCertificate
from ehds.pki.issue import Credentials, IssuedFiles, issue_certificate, load_credentials
from ehds.pki.revocation import RevocationList, refresh_crl, revoke_certificate

__all__ = [
    "CertificateAuthority",
    "CertificateError",
    "CertificateIndex",
    "Credentials",
    "Identity",
    "IdentityError",
    "IssuedCertificate",
    "IssuedFiles",
    "PkiInputError",
    "PkiStateError",
    "RevocationList",
    "Role",
    "UntrustedCertificateError",
    "UntrustedCrlError",
    "init_authority",
    "issue_certificate",
    "load_authority",
    "load_ca_certificate",
    "load_credentials",
    "refresh_crl",
    "revoke_certificate",
    "validate_name",
    "verify_issued_by",
]
