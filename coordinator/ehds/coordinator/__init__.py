"""The coordinator service and the researcher client. The coordinator never opens a CDM.

Coordinator, outside in:

    server.py        CoordinatorServer: grpc.aio server, health port, start/stop, `serve`
    service/         the gRPC adapters (NodeLink, StudyApi, AdminApi) and access control; with
                     server.py the only modules that import grpc or protobuf
    dispatch.py      Dispatcher: studies and tasks move here; applies committed Effects
    streams.py       live node streams (one queue per node, no thread per stream)
    revocation.py    the CRL, re-read when it changes
    metrics.py       Prometheus metrics (a registry per coordinator)
    validation.py    study specs checked before anything is stored
    result_document.py  the document GetResults serves
    state/           SQLAlchemy models, Alembic migrations (migrations/), the store and the
                     one database thread

Researcher client: client.py, client_config.py, client_errors.py, study_file.py.
"""
