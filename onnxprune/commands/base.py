"""What a subcommand is, and the registry of them.

A subcommand is a `Command` subclass registered with `@SUBCOMMANDS.register(name)` in its own
module of this package; the modules are listed under "subcommand" in `onnxprune/registry.py`, in
the order `onnxprune --help` lists the commands.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from typing import ClassVar

from onnxprune.errors import FLAGS
from onnxprune.registry import Registry


class Command(ABC):
    """One subcommand: its help texts, its arguments (`add_arguments`) and what it does (`run`)."""

    #: the command's line in `onnxprune --help`
    help: str = ""
    #: `onnxprune NAME --help`: the text above and below the options
    description: str | None = None
    epilog: str | None = None
    #: print the description and epilog as written (examples, exit codes), not re-wrapped
    verbatim: bool = False
    #: a library error's parameter -> the option that sets it, where this command's differs from `errors.FLAGS`
    flags: ClassVar[dict[str, str]] = {}

    @abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's arguments and options to its sub-parser."""

    @abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Run the command on the parsed arguments; returns the exit code."""

    def flag(self, parameter: str) -> str:
        """The option that sets `parameter` (a keyword argument of the library, e.g. `round_ep`):
        this command's own name for it, else the one all commands share (`errors.FLAGS`)."""
        if parameter.startswith("-"):
            return parameter
        return self.flags.get(parameter) or FLAGS.get(parameter) or "--" + parameter.replace("_", "-")

    def add_to(self, commands, name: str) -> argparse.ArgumentParser:
        """Add this command's sub-parser, called `name`, to argparse's sub-parsers `commands`."""
        formatter = argparse.RawDescriptionHelpFormatter if self.verbatim else argparse.HelpFormatter
        parser = commands.add_parser(
            name, help=self.help, description=self.description, epilog=self.epilog, formatter_class=formatter
        )
        self.add_arguments(parser)
        parser.set_defaults(handler=self)
        return parser


#: subcommand name -> its Command class (the built-in modules are listed in `onnxprune/registry.py`)
SUBCOMMANDS: Registry[type[Command]] = Registry("subcommand")
