"""The `onnxprune` command line: `onnxprune MODEL --criterion l1 --ratio 0.5 -o OUT`.

The entry point only: the parser is built from the subcommand registry (one module per command in
`onnxprune/commands/`), `onnxprune MODEL ...` means `onnxprune prune MODEL ...`, and every error
ends as one line on stderr with its exit code.
"""

from __future__ import annotations

import argparse
import os
import sys

from onnxprune import __version__
from onnxprune.commands.base import SUBCOMMANDS, Command
from onnxprune.errors import OnnxPruneError

EXAMPLES = """examples:
  onnxprune model.onnx --ratio 0.5                 prune half of every group's channels (L1)
  onnxprune model.onnx --criterion fpgm --ratio 0.3 --round-to 8 -o small.onnx
  onnxprune model.onnx --scope global --exclude '*/head/*'
  onnxprune analyze model.onnx                     which channels are coupled, what is frozen and why
  onnxprune ops                                    ops with a channel rule

exit codes: 0 ok, 2 bad input (one line on stderr, nothing written),
            3 the pruned model failed verification (nothing written; without --strict only
              when freezing the failing groups does not help),
            4 fine-tuning diverged (nothing written)"""

#: what `onnxprune MODEL ...` runs
DEFAULT_COMMAND = "prune"


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr with exit code 2."""

    def error(self, message: str):
        """Print one line and exit 2."""
        sys.stderr.write(f"onnxprune: error: {message} (see 'onnxprune --help')\n")
        raise SystemExit(2)


def build_parser() -> Parser:
    """The argument parser with every registered subcommand, in registry order."""
    parser = Parser(
        prog="onnxprune",
        description="Structured channel pruning of ONNX models. "
        "Finds coupled channels, scores them, writes a smaller model and proves it "
        "computes what the input model computes with those channels masked.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, command in SUBCOMMANDS.items():
        command().add_to(commands, name)
    return parser


def error_message(exc: OnnxPruneError, command: Command) -> str:
    """The error's message with its `{parameter}` placeholders written as the flags of `command`."""
    return exc.render(command.flag)


def _interrupt_on_sigterm():
    """SIGTERM (a pipeline's `kill`) ends the command like Ctrl-C: temporary files are removed and
    no output is left half-written. Returns the previous handler (None off the main thread)."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, interrupt)


def _restore_sigterm(previous) -> None:
    if previous is not None:
        import signal

        signal.signal(signal.SIGTERM, previous)


def run_command(command: Command, args: argparse.Namespace) -> int:
    """Run `command`; every error becomes one line on stderr and its exit code."""
    previous = _interrupt_on_sigterm()
    try:
        return command.run(args)
    except OnnxPruneError as exc:
        sys.stderr.write(f"onnxprune: error: {error_message(exc, command)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("onnxprune: interrupted; nothing was written\n")
        return 130
    except Exception as exc:  # a bug: say so in one line; ONNXPRUNE_DEBUG=1 shows the traceback
        if os.environ.get("ONNXPRUNE_DEBUG"):
            raise
        sys.stderr.write(
            f"onnxprune: internal error: {type(exc).__name__}: {exc} "
            "(nothing was written; rerun with ONNXPRUNE_DEBUG=1 for the traceback)\n"
        )
        return 1
    finally:
        _restore_sigterm(previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        argv.insert(0, DEFAULT_COMMAND)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error already printed
        return int(exit_.code or 0)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    return run_command(args.handler, args)


if __name__ == "__main__":
    raise SystemExit(main())
