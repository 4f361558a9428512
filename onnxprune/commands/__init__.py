"""Subcommands that live in their own modules (bench, profile, check, ...).

Each module listed in `MODULES` defines `NAME` (the subcommand) and `add_parser(commands)`, which
adds its sub-parser to the `onnxprune` argument parser and sets `func` to the function that runs it.
Keeping each command in its own module keeps `cli.py` short.
"""

from __future__ import annotations

import importlib

MODULES: tuple[str, ...] = ("check", "bench", "profile")


def command_names() -> tuple[str, ...]:
    """Names of the subcommands defined in this package."""
    return tuple(importlib.import_module(f"{__name__}.{module}").NAME for module in MODULES)


def add_parsers(commands) -> None:
    """Add every subcommand of this package to the argparse sub-parsers `commands`."""
    for module in MODULES:
        importlib.import_module(f"{__name__}.{module}").add_parser(commands)
