"""The federation's wire protocol: gRPC services and messages between nodes and the coordinator.

`ehds.federation.v1` holds the code generated from `protos/ehds/federation/v1/*.proto` (see
`protos/README.md`); `version` says which protocol version this code speaks and `limits` the
sizes both ends enforce. Only the transport layer imports these modules: business code works with
typed dataclasses converted at the edge.
"""
