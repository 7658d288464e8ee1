"""The coordinator process: gRPC server (NodeLink, StudyApi, AdminApi, PermitApi, AuditApi) on
grpc.aio, the plain HTTP health and metrics port, the state database, and a clean stop.

Programmatic use (tests, the demo)::

    async with CoordinatorServer(config) as server:
        ...  # server.port, server.token_port, server.health_port, server.metrics

Start order: read the signing key (the TLS key signs the audit chain and every task
assignment), the trusted HDAB keys and the OIDC key set, migrate the database to `head`, load
the CRL, resume open studies (timers), then listen. Stop order: refuse new work, end node
streams (they reconnect to the next process), stop the gRPC server with a short grace, finish
aggregations, flush last-seen times, close the database. Nothing in flight is lost: it is all in
the database.

TLS must end at this process: identities come from client certificates, so a load balancer in
front must pass TLS through (TCP), never terminate it. With ``oidc`` configured, a second port
(``token_listen``) takes calls with a bearer token and no client certificate: grpcio cannot
ask for a client certificate without requiring it, so one port cannot serve both.

Every RPC is audited by `AuditInterceptor`; every change of state by the store.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Final

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry

from ehds.analyses.registry import Registry, default_registry
from ehds.audit import AuditLog
from ehds.coordinator.config import CoordinatorConfig
from ehds.coordinator.dispatch import Dispatcher
from ehds.coordinator.errors import AuditKeyError
from ehds.coordinator.governance import Governance
from ehds.coordinator.metrics import CoordinatorMetrics
from ehds.coordinator.revocation import RevocationChecker
from ehds.coordinator.service.access import Access
from ehds.coordinator.service.admin_api import AdminApiService
from ehds.coordinator.service.audit_api import AuditApiService
from ehds.coordinator.service.audit_interceptor import AuditInterceptor
from ehds.coordinator.service.node_link import NodeLinkService
from ehds.coordinator.service.oidc import OidcVerifier
from ehds.coordinator.service.permit_api import PermitApiService
from ehds.coordinator.service.study_api import StudyApiService
from ehds.coordinator.state.database import create_state_engine, upgrade
from ehds.coordinator.state.models import AUDIT_LOG
from ehds.coordinator.state.store import Store
from ehds.coordinator.state.worker import DatabaseWorker
from ehds.core.errors import EhdsError, StateError
from ehds.core.health import HealthServer
from ehds.core.netconfig import TlsFiles
from ehds.core.signing import Signer
from ehds.federation.transport import (
    INSECURE_WARNING,
    TlsFilesError,
    server_credentials,
    server_options,
)
from ehds.federation.v1 import (
    admin_api_pb2_grpc,
    audit_api_pb2_grpc,
    node_link_pb2_grpc,
    permit_api_pb2_grpc,
    study_api_pb2_grpc,
)
from ehds.permits import HdabKey, load_trusted_keys
from ehds.pki.errors import CertificateError
from ehds.pki.identity import Identity, Role

__all__ = ["CoordinatorServer", "ListenError", "serve"]

log = logging.getLogger(__name__)

STOP_GRACE_S: Final = 2.0


class ListenError(StateError):
    """The gRPC port cannot be bound."""


class CoordinatorServer:
    """One coordinator. ``insecure``: plaintext, identities from metadata (development only).

    ``analyses`` defaults to `default_registry()`; ``metrics_registry`` to a new registry.
    """

    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        insecure: bool = False,
        analyses: Registry | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.insecure = insecure
        self.analyses = analyses if analyses is not None else default_registry()
        self.metrics = CoordinatorMetrics(metrics_registry)
        self._db: DatabaseWorker | None = None
        self._dispatcher: Dispatcher | None = None
        self._governance: Governance | None = None
        self._revocation: RevocationChecker | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health: HealthServer | None = None
        self._port = 0
        self._token_port = 0
        self._ready = False

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        """The bound gRPC port (the configured one, or the one picked for port 0)."""
        return self._port

    @property
    def token_port(self) -> int:
        """The bound port for bearer-token callers (0 without ``oidc``)."""
        return self._token_port

    @property
    def host(self) -> str:
        return self.config.listen.host

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def health_port(self) -> int:
        return self._health.port if self._health is not None else 0

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            raise StateError("the coordinator is not started")
        return self._dispatcher

    @property
    def governance(self) -> Governance:
        if self._governance is None:
            raise StateError("the coordinator is not started")
        return self._governance

    @property
    def database(self) -> DatabaseWorker:
        if self._db is None:
            raise StateError("the coordinator is not started")
        return self._db

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.insecure:
            print(INSECURE_WARNING, file=sys.stderr, flush=True)
            log.warning("coordinator running with --insecure: no TLS, no authentication")
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _start(self) -> None:
        config = self.config
        # The key files first: a typo there should not leave a new state database behind.
        credentials = None if self.insecure else server_credentials(config.tls)
        token_credentials = (
            _token_port_credentials(config.tls)
            if config.token_listen is not None and not self.insecure
            else None
        )
        ca_pem = b"" if self.insecure else _read_ca(config)
        signer, certificate_pem, chain = _signing_identity(config.tls, insecure=self.insecure)
        trusted = _trusted_hdabs(config)
        oidc = OidcVerifier(config.oidc) if config.oidc is not None else None
        audit_log = AuditLog(AUDIT_LOG, signer, chain)
        engine = create_state_engine(config.state.url)
        self._db = DatabaseWorker(engine)
        await self._db.call(lambda: upgrade(engine))
        self.metrics.state.watch(engine)
        self._revocation = RevocationChecker(
            None if self.insecure else config.revocation.crl,
            ca_pem,
            check_interval_seconds=config.revocation.check_interval_seconds,
            on_change=self._crl_changed,
        )
        await asyncio.to_thread(self._revocation.load)
        store = Store(
            self.analyses,
            min_cell_count=config.studies.min_cell_count,
            audit_log=audit_log,
            signer=signer,
            trusted=trusted,
        )
        self._dispatcher = Dispatcher(
            config=config,
            db=self._db,
            registry=self.analyses,
            metrics=self.metrics,
            revocation=self._revocation,
            max_result_bytes=config.max_result_bytes,
            store=store,
            certificate_pem=certificate_pem,
        )
        await self._dispatcher.start()
        self._governance = Governance(db=self._db, store=store, retention=config.retention)
        self._governance.start()

        access = Access(self._revocation, insecure=self.insecure, oidc=oidc)
        server = grpc.aio.server(
            options=server_options(config.keepalive),
            interceptors=[AuditInterceptor(lambda: self._governance, access)],
        )
        self._grpc = server
        dispatcher, governance = self._dispatcher, self._governance
        node_link_pb2_grpc.add_NodeLinkServicer_to_server(
            NodeLinkService(dispatcher, access), server
        )
        study_api_pb2_grpc.add_StudyApiServicer_to_server(
            StudyApiService(dispatcher, access), server
        )
        admin_api_pb2_grpc.add_AdminApiServicer_to_server(
            AdminApiService(dispatcher, access), server
        )
        permit_api_pb2_grpc.add_PermitApiServicer_to_server(
            PermitApiService(governance, access), server
        )
        audit_api_pb2_grpc.add_AuditApiServicer_to_server(
            AuditApiService(governance, access), server
        )
        self._port = _add_port(server, f"{config.listen.host}:{config.listen.port}", credentials)
        if config.token_listen is not None and token_credentials is not None:
            token = config.token_listen
            self._token_port = _add_port(server, f"{token.host}:{token.port}", token_credentials)
        await server.start()
        self._health = HealthServer(
            config.health.host, config.health.port, self.metrics.registry, lambda: self._ready
        )
        self._health.start()
        self._revocation.start()
        self._ready = True
        log.info("coordinator listening on %s (health port %d)", self.address, self.health_port)

    def _crl_changed(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.close_revoked_certificates()

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop everything started; safe to call twice or after a failed start."""
        self._ready = False
        if self._revocation is not None:
            await self._revocation.stop()
        if self._dispatcher is not None:
            self._dispatcher.begin_shutdown()
        if self._governance is not None:
            await self._governance.stop()
        if self._grpc is not None:
            # The audit entries of the calls it ends still go to the database.
            await self._grpc.stop(grace)
            self._grpc = None
        if self._dispatcher is not None:
            await self._dispatcher.stop()
            self._dispatcher = None
        self.metrics.state.watch(None)
        if self._db is not None:
            await self._db.close()
            self._db = None
        self._governance = None
        if self._health is not None:
            self._health.stop()
            self._health = None

    async def __aenter__(self) -> CoordinatorServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


def _add_port(
    server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None
) -> int:
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise ListenError(f"cannot listen on {address} (in use, or not allowed)")
    return port


def _token_port_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Server TLS only: the port for bearer tokens asks no client certificate (grpcio has no
    "ask but do not require"), so certificate holders use the main port."""
    try:
        pair = (tls.key.read_bytes(), tls.certificate.read_bytes())
    except OSError as exc:
        raise TlsFilesError(
            f"cannot read the TLS key or certificate ({exc.filename}): {exc.strerror}"
        ) from None
    return grpc.ssl_server_credentials([pair], require_client_auth=False)


def _signing_identity(tls: TlsFiles, *, insecure: bool) -> tuple[Signer, bytes, str]:
    """The coordinator's signer (its TLS key), certificate (PEM) and audit chain name
    (``coordinator NAME`` from the certificate). With ``--insecure`` and unreadable files, a
    throw-away key signs (a local development run has nothing to prove)."""
    try:
        certificate_pem = tls.certificate.read_bytes()
        identity = Identity.from_certificate(certificate_pem)
        signer = Signer.from_file(tls.key)
        if identity.role is not Role.COORDINATOR:
            raise AuditKeyError(
                f"tls.certificate {tls.certificate} names {identity}, not a coordinator"
            )
        if _public_numbers(certificate_pem) != signer.public_key.public_numbers():
            raise AuditKeyError(f"tls.key {tls.key} is not the key of tls.certificate")
    except (OSError, EhdsError, CertificateError) as exc:
        if not insecure:
            if isinstance(exc, OSError):
                raise AuditKeyError(
                    f"cannot read the TLS key or certificate ({exc.filename}): {exc.strerror}"
                ) from None
            raise
        log.warning("--insecure: signing with a throw-away key (%s)", exc)
        return Signer(ec.generate_private_key(ec.SECP256R1())), b"", "coordinator insecure"
    return signer, certificate_pem, str(identity)


def _public_numbers(certificate_pem: bytes) -> ec.EllipticCurvePublicNumbers | None:
    key = x509.load_pem_x509_certificate(certificate_pem).public_key()
    return key.public_numbers() if isinstance(key, ec.EllipticCurvePublicKey) else None


def _trusted_hdabs(config: CoordinatorConfig) -> tuple[HdabKey, ...]:
    keys = load_trusted_keys(config.permits.hdab_keys)
    if not keys:
        log.warning(
            "permits.hdab_keys is empty: no data permit can be registered, so no study can "
            "be submitted"
        )
    return keys


def _read_ca(config: CoordinatorConfig) -> bytes:
    try:
        return config.tls.ca.read_bytes()
    except OSError as exc:
        raise TlsFilesError(
            f"cannot read the TLS CA certificate {config.tls.ca}: {exc.strerror}"
        ) from None


async def serve(
    config: CoordinatorConfig,
    *,
    insecure: bool = False,
    on_ready: Callable[[CoordinatorServer], None] = lambda server: None,
) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly (the `ehds coordinator serve` loop)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        async with CoordinatorServer(config, insecure=insecure) as server:
            on_ready(server)
            await stop.wait()
            log.info("stopping the coordinator")
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
