"""The coordinator service and the researcher client. The coordinator never opens a CDM.

Coordinator, outside in:

    server.py        CoordinatorServer: grpc.aio server, health port, start/stop, `serve`
    service/         the gRPC adapters (NodeLink, StudyApi, AdminApi, PermitApi, AuditApi),
                     access control (certificates, OIDC tokens: oidc.py), the audit
                     interceptor; with server.py the only modules that import grpc or protobuf
    dispatch.py      Dispatcher: studies and tasks move here; applies committed Effects
    governance.py    the register of permits, the audit entries of RPCs, retention
    streams.py       live node streams (one queue per node, no thread per stream)
    revocation.py    the CRL, re-read when it changes
    metrics.py       Prometheus metrics (a registry per coordinator)
    validation.py    study specs checked before anything is stored
    result_document.py  the document GetResults serves
    state/           SQLAlchemy models, Alembic migrations (migrations/), the store (studies,
                     tasks, permits, the audit chain, retention) and the one database thread

Researcher client: client.py, client_config.py, client_errors.py, study_file.py.
"""
