"""`onnxprune ops`: the op-coverage table (which ops have a channel rule)."""

from __future__ import annotations

import argparse

from onnxprune.commands.base import SUBCOMMANDS, Command


@SUBCOMMANDS.register("ops")
class Ops(Command):
    """`onnxprune ops`."""

    help = "print the op-coverage table (which ops have channel rules)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """No arguments."""

    def run(self, args: argparse.Namespace) -> int:
        """Print the table."""
        from onnxprune.report.console import print_rules

        print_rules()
        return 0
