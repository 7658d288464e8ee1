"""Errors of the federation PKI.

    EhdsError
    ├── InputError
    │   ├── PkiInputError              a bad name, role, address, validity or file path
    │   └── CertificateError           a certificate or CRL that is unreadable or untrusted
    │       ├── UntrustedCertificateError  not signed by the federation CA
    │       ├── UntrustedCrlError          not signed by the federation CA, or expired
    │       └── IdentityError              no single CN and OU naming a valid identity
    └── StateError
        └── PkiStateError              the PKI directory does not allow the operation
                                       (no CA yet, CA exists, duplicate live name...)

Messages name files and certificate names, never key material.
"""

from __future__ import annotations

from ehds.core.errors import InputError, StateError


class PkiInputError(InputError):
    """A bad argument: name, role, DNS name, IP address, validity period, missing file."""


class PkiStateError(StateError):
    """The PKI directory is not in a state that allows the operation; nothing was changed."""


class CertificateError(InputError):
    """A certificate or CRL cannot be read or must not be trusted."""


class UntrustedCertificateError(CertificateError):
    """The certificate was not issued (signed) by the federation CA."""


class UntrustedCrlError(CertificateError):
    """The CRL was not signed by the federation CA, or its next update has passed."""


class IdentityError(CertificateError):
    """The certificate does not name exactly one valid CN (name) and OU (role)."""
