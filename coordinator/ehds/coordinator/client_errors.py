"""What can go wrong when talking to the coordinator, as typed errors a caller can act on.

    CoordinatorClientError                     (mixin: every error of the researcher client)
    ├── StudyRejectedError       InputError    INVALID_ARGUMENT: fix the study and resubmit
    ├── StudyNotFoundError       InputError    NOT_FOUND: wrong id, or not one of yours
    ├── AccessDeniedError        InputError    PERMISSION_DENIED / UNAUTHENTICATED: wrong
    │                                          certificate, token or role for this API
    ├── ConflictError            InputError    ALREADY_EXISTS: e.g. another permit document
    │                                          under a registered permit id
    ├── ResultsNotReadyError     StateError    FAILED_PRECONDITION: the study has not completed
    ├── CoordinatorUnavailableError StateError UNAVAILABLE / DEADLINE_EXCEEDED: not reachable
    ├── StudyWaitTimeoutError    StateError    `wait` ran out of time; the study goes on
    ├── ResultDocumentError      StateError    the result download was broken or not JSON
    └── CoordinatorCallError     StateError    any other gRPC status (the code is in the text)

Why typed and not `grpc.RpcError`: the CLI turns `EhdsError` into a one-line message and an
exit code, and tests and the demo can tell "fix your input" from "try again later" without
parsing gRPC status codes. The server's status message is kept (it names the field at fault);
it never carries row-level data (see `study_api.proto`).
"""

from __future__ import annotations

import grpc

from ehds.core.errors import EhdsError, InputError, StateError


class CoordinatorClientError(EhdsError):
    """Base of the researcher client's errors (each also derives from InputError/StateError)."""


class StudyRejectedError(CoordinatorClientError, InputError):
    """The coordinator refused the study; the message names the field at fault."""


class StudyNotFoundError(CoordinatorClientError, InputError):
    """No study (or node) of that name that the caller may see."""


class AccessDeniedError(CoordinatorClientError, InputError):
    """The caller's certificate does not grant this API (e.g. a researcher calling AdminApi)."""


class ConflictError(CoordinatorClientError, InputError):
    """What was sent conflicts with what the coordinator holds (e.g. a permit id)."""


class ResultsNotReadyError(CoordinatorClientError, StateError):
    """Results were asked for a study that has not completed."""


class CoordinatorUnavailableError(CoordinatorClientError, StateError):
    """The coordinator could not be reached, or did not answer in time."""


class StudyWaitTimeoutError(CoordinatorClientError, StateError):
    """The study did not end within the time given to `wait`; it is still running."""


class ResultDocumentError(CoordinatorClientError, StateError):
    """The result document arrived broken (chunks, digest) or is not a JSON object."""


class CoordinatorCallError(CoordinatorClientError, StateError):
    """Any other gRPC failure (INTERNAL, RESOURCE_EXHAUSTED, ...)."""


def status_of(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a failed call. grpcio's errors raised by calls are also
    `grpc.Call`s, but its type stubs cannot say so, hence the duck typing."""
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else None
    details = details_of() if callable(details_of) else None
    return (
        code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN,
        details if isinstance(details, str) else "",
    )


def error_from_rpc(error: grpc.RpcError, *, address: str, operation: str) -> EhdsError:
    """The typed error for a failed call: ``operation`` says what was attempted (e.g.
    ``get study 01J...``) and ``address`` where, so that the message stands on its own."""
    code, details = status_of(error)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return StudyRejectedError(f"{operation}: rejected by the coordinator: {details}")
    if code is grpc.StatusCode.NOT_FOUND:
        return StudyNotFoundError(f"{operation}: not found" + (f" ({details})" if details else ""))
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return AccessDeniedError(
            f"{operation}: the coordinator at {address} refused this certificate: {details} "
            "(check tls.certificate, or the token, in the client configuration and its role)"
        )
    if code is grpc.StatusCode.ALREADY_EXISTS:
        return ConflictError(f"{operation}: {details}")
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        return ResultsNotReadyError(f"{operation}: {details or 'not possible in this state'}")
    if code is grpc.StatusCode.UNAVAILABLE:
        return CoordinatorUnavailableError(
            f"{operation}: the coordinator at {address} is unavailable ({details}); check the "
            "address, that it is running, and the TLS files of the client configuration"
        )
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return CoordinatorUnavailableError(
            f"{operation}: the coordinator at {address} did not answer in time"
        )
    return CoordinatorCallError(f"{operation}: coordinator at {address}: {code.name}: {details}")
