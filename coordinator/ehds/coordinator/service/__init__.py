"""The gRPC adapters: NodeLink, StudyApi, AdminApi. With `ehds.coordinator.server`, the only
modules that touch protobuf or grpc; they translate with `ehds.federation.serde` and call the
dispatcher, which works on `ehds.federation.model` dataclasses."""
