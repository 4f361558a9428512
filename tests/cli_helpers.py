"""Helpers shared by the CLI tests: run `onnxprune` in-process, fingerprint files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from onnxprune.cli import main


def sha(path: Path) -> str:
    """SHA-256 of a file's bytes (to prove an input was not modified)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `onnxprune ARGS` run in this process."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err
