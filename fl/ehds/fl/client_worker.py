"""A long-lived Flower ClientApp host, one per node and study (``python -m ehds.fl.client_worker``).

Frames on stdin/stdout (ehds.fl.frames); stderr is the worker's log. The order of the start
is the point of this module: the process cuts itself off the network first, then checks the
bundle digest against the one the node allow-listed, and only then unpacks the bundle and
imports its code with Flower's loader. Nothing of the researcher's runs before both checks,
and no module of Flower is imported before them either.

  -> {"op": "start", "fab_path", "sha256", "app_dir", "node_id", "node_config",
      "run_config", "run_id"}
  <- {"op": "ready", "isolation": "netns+audit" | "audit"}
     | {"op": "refused", "rule": "fl.bundle_unknown" | "fl.bundle_invalid"}
     | {"op": "failed", "code": "fl.client_error"}           (the ClientApp did not load)
  -> {"op": "message", "message": b64}
  <- {"op": "reply", "message": b64} | {"op": "error", "code": "fl.client_error" | "fl.bad_message"}
  -> {"op": "stop"} or end of stdin: exit 0.

A ClientApp exception is reported by type name on stderr and by code on the pipe: its text
could quote data. Context.state lives as long as the process, as on a Flower SuperNode.
"""

from __future__ import annotations

import base64
import logging
import sys
from pathlib import Path
from typing import Any, BinaryIO

from ehds.fl.bundle import BundleError, fab_digest, read_app_info, unpack_fab
from ehds.fl.frames import encode_frame, frame_channel, read_frame, write_frame
from ehds.fl.isolation import isolate

_log = logging.getLogger("ehds.fl.client_worker")
EXIT_REFUSED = 3
EXIT_FAILED = 1


def _user_config(value: Any) -> dict[str, bool | int | float | str]:
    if not isinstance(value, dict):
        return {}
    return {
        str(key): item for key, item in value.items() if isinstance(item, bool | int | float | str)
    }


def _serve(frames_in: BinaryIO, frames_out: BinaryIO, start: dict[str, Any]) -> int:
    """Load the ClientApp and answer messages until stop; the digest was checked already."""
    from flwr.app import Context, RecordDict  # noqa: PLC0415 - only after isolation and digest
    from flwr.clientapp import ClientApp  # noqa: PLC0415
    from flwr.clientapp.client_app import LoadClientAppError  # noqa: PLC0415
    from flwr.supercore.object_ref import load_app  # noqa: PLC0415
    from flwr.supercore.task_identity import TaskIdentity  # noqa: PLC0415

    from ehds.fl.codec import (  # noqa: PLC0415
        decode_message,
        encode_message,
        new_message_id,
        set_message_id,
    )

    app_dir = Path(str(start["app_dir"]))
    node_id, run_id = int(start["node_id"]), int(start["run_id"])
    try:
        info = read_app_info(app_dir)
        client_app = load_app(info.clientapp, LoadClientAppError, app_dir)
        if not isinstance(client_app, ClientApp):
            raise LoadClientAppError("the clientapp component is not a flwr ClientApp")
    except Exception as error:
        _log.error("ClientApp did not load: %s", type(error).__name__)
        write_frame(frames_out, {"op": "failed", "code": "fl.client_error"})
        return EXIT_FAILED
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id
    context = Context(
        run_id=run_id,
        node_id=node_id,
        node_config=_user_config(start.get("node_config")),
        state=RecordDict(),
        run_config=_user_config(start.get("run_config")),
    )
    write_frame(frames_out, {"op": "ready", "isolation": start["_isolation"]})
    while True:
        frame = read_frame(frames_in)
        if frame is None or frame.get("op") == "stop":
            return 0
        if frame.get("op") != "message":
            write_frame(frames_out, {"op": "error", "code": "fl.bad_message"})
            continue
        try:
            message = decode_message(base64.b64decode(str(frame["message"]), validate=True))
        except (KeyError, ValueError):
            write_frame(frames_out, {"op": "error", "code": "fl.bad_message"})
            continue
        if message.metadata.dst_node_id != node_id or message.metadata.run_id != run_id:
            write_frame(frames_out, {"op": "error", "code": "fl.bad_message"})
            continue
        try:
            reply = client_app(message=message, context=context)
            if reply.metadata.reply_to_message_id != message.metadata.message_id:
                raise ValueError("the ClientApp's reply does not answer the message")
            set_message_id(reply, new_message_id())
            answer = encode_frame(
                {"op": "reply", "message": base64.b64encode(encode_message(reply)).decode()}
            )
        except Exception as error:  # the app's failure, or a reply over the frame cap
            _log.error("ClientApp raised %s", type(error).__name__)
            write_frame(frames_out, {"op": "error", "code": "fl.client_error"})
            continue
        frames_out.write(answer)
        frames_out.flush()


def main() -> int:
    """Isolate, check the digest, unpack, load, serve."""
    isolation = isolate()
    frames_in, frames_out = frame_channel()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    start = read_frame(frames_in)
    if start is None:
        return 0
    if start.get("op") != "start":
        write_frame(frames_out, {"op": "failed", "code": "fl.bad_message"})
        return EXIT_FAILED
    try:
        fab = Path(str(start["fab_path"])).read_bytes()
    except OSError:
        write_frame(frames_out, {"op": "refused", "rule": "fl.bundle_unknown"})
        return EXIT_REFUSED
    if fab_digest(fab) != str(start.get("sha256", "")).lower():
        _log.error("bundle digest does not match the allow-listed one; refused")
        write_frame(frames_out, {"op": "refused", "rule": "fl.bundle_unknown"})
        return EXIT_REFUSED
    try:
        unpack_fab(fab, Path(str(start["app_dir"])))
    except BundleError as error:
        _log.error("bundle refused: %s", error)
        write_frame(frames_out, {"op": "refused", "rule": "fl.bundle_invalid"})
        return EXIT_REFUSED
    start["_isolation"] = isolation
    return _serve(frames_in, frames_out, start)


if __name__ == "__main__":
    sys.exit(main())
