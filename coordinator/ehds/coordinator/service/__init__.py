"""The gRPC adapters: NodeLink, StudyApi, AdminApi, PermitApi, AuditApi, with access control
(`access.py`, `oidc.py`) and the interceptor that audits every call (`audit_interceptor.py`).
With `ehds.coordinator.server`, the only modules that touch protobuf or grpc; they translate with
`ehds.federation.serde` and call the dispatcher, which works on `ehds.federation.model`
dataclasses."""
