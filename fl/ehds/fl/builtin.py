"""The Flower apps shipped with the product, as bundles a node's policy can allow by digest.

Why built from the source tree on demand (and not shipped as .fab files): `build_fab` is
deterministic, so the bundle of a given release has one SHA-256, which an operator can pin in
a node's allow-list by running ``ehds fl build`` (or reading this module's answer) once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from ehds.fl.bundle import build_fab

APPS_DIR: Final = Path(__file__).resolve().parent / "apps"
BUILTIN_APPS: Final[dict[str, Path]] = {"ehds-logreg": APPS_DIR / "logreg"}


def builtin_app_dir(name: str) -> Path:
    try:
        return BUILTIN_APPS[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_APPS))
        raise KeyError(f"no built-in Flower app {name!r} (built-in: {known})") from None


def builtin_fab(name: str) -> bytes:
    """The FAB of the built-in app ``name`` (the same bytes on every call and machine)."""
    return build_fab(builtin_app_dir(name))
