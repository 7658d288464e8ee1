"""Placeholder: replaced by its owner (see /work/notes/etl-contract.md)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    del commands
