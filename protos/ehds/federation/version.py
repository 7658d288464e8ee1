"""The version of the federation protocol (package `ehds.federation.v1`) that this code speaks.

A node announces it in `Hello.protocol_version`; the coordinator answers in `Welcome` with the
version the stream will use: the same major, the lower of the two minors. A different major is a
different protobuf package (`ehds.federation.v2`) and the coordinator refuses the stream.

Bump the MINOR version with every change to the `.proto` files that a peer could notice (a new
field, message, oneof case or enum value): a coordinator must know which of them a node speaking
an older minor version can send and understand. Kept as plain integers, not read from the
generated code, so that a test can run a node that speaks the previous minor version.

History:
    1.0  first release
    1.1  Welcome.coordinator_time (clock-skew warning at the node)
    1.2  TaskAssignment.requested_by (the node's differencing guard keys on the researcher)
    1.3  governance: signed TaskAssignment (permit document, nonce, expiry, coordinator audit
         reference, signature), Welcome.coordinator_certificate, audit chain heads in Heartbeat,
         ResultChunk and TaskOutcome, ASSIGNMENT_REJECTED / RELEASE_REJECTED, the
         AWAITING_RELEASE stage and node task state, PermitApi and AuditApi
    1.4  Study.round (iterative analyses: a study's tasks are its current round's)
"""

from __future__ import annotations

from typing import Final

PROTOCOL_MAJOR: Final = 1
PROTOCOL_MINOR: Final = 4
PROTOCOL_VERSION: Final[tuple[int, int]] = (PROTOCOL_MAJOR, PROTOCOL_MINOR)
